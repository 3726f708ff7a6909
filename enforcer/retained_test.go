package enforcer

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/wire"
)

// retainedList stands for agentsync.Agent.RetainedClusters.
type retainedList struct {
	mu  sync.Mutex
	ids []uint16
}

func (r *retainedList) get() []uint16 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ids)
}

func (r *retainedList) set(ids ...uint16) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids = ids
}

func (f *fixture) policies(t *testing.T) []tcpolicy.Key {
	t.Helper()
	ks, err := f.dp.Policies()
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func sortedKeys(ks ...tcpolicy.Key) []tcpolicy.Key {
	slices.SortFunc(ks, func(a, b tcpolicy.Key) int {
		if a.Peer != b.Peer {
			return int(a.Peer) - int(b.Peer)
		}
		return int(a.Port) - int(b.Port)
	})
	return ks
}

// The previous run's identities of west (cluster 2) and north (3).
const (
	westGone    = 2<<16 + 5 // west's, deleted while west was down
	westBackend = 2<<16 + 3 // known again before west fully synced; not allowed now
	northOld    = 3<<16 + 9
)

// startRestarted starts an enforcer after an agent restart: the policy map
// holds the previous run's entries (west's frontends allowed, and entries
// the current policy no longer allows), west (cluster 2) is retained and
// its frontend identities are unknown; east's and north's are known, and
// west's backend (the start of west's sync).
func startRestarted(t *testing.T, retained *retainedList) *fixture {
	t.Helper()
	f := startCfg(t, func(f *fixture, c *Config) {
		c.RetainedClusters = retained.get
		prev := []tcpolicy.Key{
			{Endpoint: eastCheckout, Peer: wire.IdentityHost, Direction: datapath.Ingress},
			allow(eastCheckout, eastFrontend), allow(eastCheckout, westFrontend), allow(eastCheckout, westGone),
			allow(eastCheckout, westBackend), allow(eastCheckout, northFront), allow(eastCheckout, northOld),
			allow(eastCheckout, datapath.IdentityWorld), // reserved: never kept
		}
		if err := f.dp.SyncPolicy(prev); err != nil {
			t.Fatal(err)
		}
	}, nil)
	f.writePolicy(t, "checkout.yaml", checkoutPolicy)
	f.e.SetLocalState(localState())
	f.e.UpsertIdentity("east", eastCheckout, podLabels("east", "checkout"))
	f.e.UpsertIdentity("east", eastFrontend, podLabels("east", "frontend"))
	f.e.UpsertIdentity("north", northFront, podLabels("north", "frontend"))
	f.e.UpsertIdentity("west", westBackend, podLabels("west", "backend"))
	testenv.WaitFor(t, 5*time.Second, "policies loaded and identities known", func() bool {
		s := f.e.Status()
		return s.Rules == 1 && s.Identities == 5 // and the host
	})
	close(f.ready) // the agent's sync timeout: west is still down
	testenv.WaitFor(t, 5*time.Second, "policy map written", func() bool { return f.e.Status().Enforcing })
	return f
}

var fromHost = tcpolicy.Key{Endpoint: eastCheckout, Peer: wire.IdentityHost, Direction: datapath.Ingress}

// TestEnforcerKeepsRetainedClusterEntries: a restart while west is down
// keeps allowing west's frontends (unknown identities of a retained
// cluster) and drops what is known not to be allowed; once west has
// synced, the map is written whole without the entries it no longer has.
func TestEnforcerKeepsRetainedClusterEntries(t *testing.T) {
	retained := &retainedList{ids: []uint16{2}}
	f := startRestarted(t, retained)
	want := sortedKeys(fromHost, allow(eastCheckout, eastFrontend), allow(eastCheckout, westFrontend), allow(eastCheckout, westGone))
	if got := f.policies(t); !slices.Equal(got, want) {
		t.Fatalf("policy map after the first write while west is down:\n got  %v\n want %v\n(west's unknown frontends kept; west's known backend, north's and world's entries gone)", got, want)
	}
	if s := f.e.Status(); !slices.Equal(s.RetainedClusters, []uint16{2}) {
		t.Fatalf("status retainedClusters %v, want [2]", s.RetainedClusters)
	}

	// West comes back: its frontend is known again (its entry claimed),
	// then its sync completes and it leaves the retained set.
	f.e.UpsertIdentity("west", westFrontend, podLabels("west", "frontend"))
	testenv.WaitFor(t, 5*time.Second, "west's frontend known", func() bool { return f.e.Status().Identities == 6 })
	retained.set()
	testenv.WaitFor(t, 5*time.Second, "west's gone identity dropped", func() bool {
		return !f.hasKey(allow(eastCheckout, westGone)) && len(f.e.Status().RetainedClusters) == 0
	})
	want = sortedKeys(fromHost, allow(eastCheckout, eastFrontend), allow(eastCheckout, westFrontend))
	if got := f.policies(t); !slices.Equal(got, want) || !f.e.Status().Enforcing {
		t.Fatalf("policy map after west synced:\n got  %v\n want %v (exactly the computed keys)", got, want)
	}
}

// TestEnforcerDropsRetainedEntriesWhenRetentionEnds: west never comes back
// with its frontends; when the agent stops retaining it (it synced, or
// was removed from the mesh), its entries go.
func TestEnforcerDropsRetainedEntriesWhenRetentionEnds(t *testing.T) {
	retained := &retainedList{ids: []uint16{2}}
	f := startRestarted(t, retained)
	if !f.hasKey(allow(eastCheckout, westFrontend)) || !f.hasKey(allow(eastCheckout, westGone)) {
		t.Fatalf("west's entries were not kept: %v", f.policies(t))
	}
	retained.set()
	testenv.WaitFor(t, 5*time.Second, "west's entries dropped", func() bool {
		return !f.hasKey(allow(eastCheckout, westFrontend)) && len(f.e.Status().RetainedClusters) == 0
	})
	want := sortedKeys(fromHost, allow(eastCheckout, eastFrontend))
	if got := f.policies(t); !slices.Equal(got, want) {
		t.Fatalf("policy map after west's retention ended:\n got  %v\n want %v", got, want)
	}
}

// TestEnforcerRetainedPeerCluster: a peer's cluster is id>>16 in a mesh of
// 255 clusters and id>>15 in one of 511; reserved and known identities
// are never kept.
func TestEnforcerRetainedPeerCluster(t *testing.T) {
	for _, c := range []struct {
		max  uint32
		kept []uint32 // of cluster 2, unknown
		not  []uint32
	}{
		{0, []uint32{2 << 16, 2<<16 + 1, 3<<16 - 1}, []uint32{3 << 16, 2<<15 + 1, 1, 2, 255, 2<<16 + 7}},
		{wire.ExtendedMaxConnectedClusters, []uint32{2 << 15, 2<<15 + 1, 3<<15 - 1}, []uint32{3 << 15, 2<<16 + 1, 1, 255, 2<<15 + 7}},
	} {
		e, err := New(Config{ClusterName: "east", ClusterID: 1, NodeName: "n", Policy: tcpolicy.NewMemory(),
			MaxConnectedClusters: c.max, RetainedClusters: func() []uint16 { return []uint16{2} }})
		if err != nil {
			t.Fatal(err)
		}
		e.known[2<<16+7], e.known[2<<15+7] = struct{}{}, struct{}{}
		e.adoptRetained([]uint16{2})
		keep := e.keepPeer()
		for _, id := range c.kept {
			if !keep(id) {
				t.Errorf("max %d: identity %#x (cluster 2, unknown) not kept", c.max, id)
			}
		}
		for _, id := range c.not {
			if keep(id) {
				t.Errorf("max %d: identity %#x kept", c.max, id)
			}
		}
		e.adoptRetained(nil)
		if e.keepPeer() != nil {
			t.Errorf("max %d: nothing retained, yet a predicate", c.max)
		}
	}
	_, err := New(Config{ClusterName: "east", ClusterID: 1, NodeName: "n", Policy: tcpolicy.NewMemory(), MaxConnectedClusters: 300})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("max 300: %v, want ErrInvalidConfig", err)
	}
}
