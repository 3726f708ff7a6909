package agentsync

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/wire"
)

// A remote that exports its services only as endpoint slices has none to
// read: the agent does not wait for them (it becomes ready on the other
// kinds), forgets what it said as services before, and status says why.
// One that exports both is read through its services, and status says the
// endpoint slices are ignored.
func TestEndpointSlicesExportMode(t *testing.T) {
	r, _, _ := lwRemote(t, 0)
	svc, _ := wire.EncodeService(&wire.ClusterService{Cluster: "west", Namespace: "shop", Name: "cart", ClusterID: 2, Shared: true})
	ks := r.kinds[wire.Services]
	ks.mu.Lock()
	err := ks.store.apply(wire.ServiceKey("west", "shop", "cart"), svc, 1)
	ks.mu.Unlock()
	if err != nil || ks.count() != 1 {
		t.Fatalf("service not held: %v", err)
	}

	r.setExportMode(wire.ExportEndpointSlicesOnly)
	if slices.Contains(r.watchedKinds(), wire.Services) {
		t.Errorf("services still watched: %v", r.watchedKinds())
	}
	if n := ks.count(); n != 0 {
		t.Errorf("%d services kept from before", n)
	}
	for _, k := range []wire.Kind{wire.Nodes, wire.Identities, wire.IPCache} {
		r.setSynced(k)
	}
	st := r.snapshot()
	if !st.Ready {
		t.Error("not ready without services")
	}
	if len(st.Unsupported) != 1 || st.Unsupported[0].Kind != UnsupportedEndpointSlices ||
		!strings.Contains(st.Unsupported[0].Reason, "endpointslices-only") || !strings.Contains(st.Unsupported[0].Reason, "clustermesh-service-v2") {
		t.Errorf("status does not say why: %+v", st.Unsupported)
	}

	r.setExportMode(wire.ExportServicesAndEndpointSlices)
	if !slices.Contains(r.watchedKinds(), wire.Services) {
		t.Error("services not watched")
	}
	if st := r.snapshot(); len(st.Unsupported) != 1 || !strings.HasPrefix(st.Unsupported[0].Reason, "ignored") {
		t.Errorf("status: %+v", st.Unsupported)
	}
	r.setExportMode(wire.ExportServicesOnly)
	if st := r.snapshot(); st.Unsupported != nil || len(r.watchedKinds()) != len(wire.Kinds) {
		t.Errorf("services only: %+v, %v", st.Unsupported, r.watchedKinds())
	}
}

// The local and the remote mesh sizes must agree; a remote that does not
// is refused, and its status says which side runs with what and what to
// change.
func TestClusterConfigMaxConnectedClusters(t *testing.T) {
	cli := lwEtcd(t)
	for _, tc := range []struct {
		local, remote uint32
		ok            bool
	}{{255, 255, true}, {255, 511, false}, {511, 511, true}, {511, 255, false}} {
		r, _, _ := lwRemote(t, 0)
		r.agent.cfg.MaxConnectedClusters = tc.local
		ctx, cancel := context.WithTimeout(context.Background(), lwWait)
		v := `{"id":2,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":` + itoa(tc.remote) + `}}`
		if _, err := cli.Put(ctx, wire.ClusterConfigKey("west"), v); err != nil {
			t.Fatal(err)
		}
		pin, err := r.clusterConfig(ctx, cli)
		cancel()
		if tc.ok {
			if err != nil || pin.cluster.MaxConnectedClusters != tc.local {
				t.Errorf("local %d, remote %d: %+v, %v", tc.local, tc.remote, pin.cluster, err)
			}
			continue
		}
		r.setDisconnected(err) // as run does with a session's error
		st := r.snapshot()
		for _, want := range []string{"maxConnectedClusters " + itoa(tc.remote) + ", this cluster with " + itoa(tc.local), "same value on both clusters"} {
			if !strings.Contains(st.LastError, want) {
				t.Errorf("local %d, remote %d: last error %q does not say %q", tc.local, tc.remote, st.LastError, want)
			}
		}
		if st.Rejected["incompatible_config"] != 1 {
			t.Errorf("local %d, remote %d: rejected %v", tc.local, tc.remote, st.Rejected)
		}
	}
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

// A snapshot taken while the remote's lists complete never says ready with
// fewer entries than the lists gave: readiness is read before the counts
// (a kind counted mid-list, then found synced, once said "ready" with none
// of its entries, under load in the scale rig).
func TestSnapshotReadyCountsWhatWasListed(t *testing.T) {
	r, _, _ := lwRemote(t, 0)
	ks := r.kinds[wire.IPCache]
	key := wire.IPCachePrefixKey(netip.MustParsePrefix("10.2.0.7/32"))
	val, err := wire.EncodeIPIdentityPair(&wire.IPIdentityPair{IP: netip.MustParseAddr("10.2.0.7"), ID: identityOf(lwWest), HostIP: netip.MustParseAddr("192.168.2.1")})
	if err != nil {
		t.Fatal(err)
	}
	r.countedHook = func() { // the lists complete now, once the kinds are counted
		r.countedHook = nil
		ks.mu.Lock()
		err := ks.store.apply(key, val, 1)
		ks.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range r.watchedKinds() {
			r.setSynced(k)
		}
	}
	if st := r.snapshot(); st.Ready && st.Endpoints == 0 {
		t.Fatalf("ready with %d endpoints, the list gave 1", st.Endpoints)
	}
	if st := r.snapshot(); !st.Ready || st.Endpoints != 1 {
		t.Fatalf("after the sync: ready %v with %d endpoints, want ready with 1", st.Ready, st.Endpoints)
	}
}

// identityOf is the first identity cluster c owns.
func identityOf(c wire.Cluster) uint32 {
	first, _ := wire.IdentityRange(c.ID, c.MaxConnectedClusters)
	return first
}
