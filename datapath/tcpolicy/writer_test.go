package tcpolicy

import (
	"math/rand/v2"
	"reflect"
	"testing"

	"net/netip"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
	"github.com/clustermesh/clustermesh/datapath/internal/dptest"
)

// Tests of the policy writers (both implementations) and of the key
// expansion; the programs are tested in policy_prog_test.go.

// policyImpls are the Writers under test.
var policyImpls = []struct {
	name string
	open func(t *testing.T) Writer
}{
	{"ebpf", func(t *testing.T) Writer {
		_, p := openTest(t, Config{})
		return p
	}},
	{"memory", func(t *testing.T) Writer { return NewMemory() }},
}

func forEachPolicy(t *testing.T, fn func(t *testing.T, w Writer)) {
	for _, impl := range policyImpls {
		t.Run(impl.name, func(t *testing.T) { fn(t, impl.open(t)) })
	}
}

func wantPolicies(t testing.TB, w Writer, want ...Key) {
	t.Helper()
	got, err := w.Policies()
	dptest.NoErr(t, err)
	if want == nil {
		want = []Key{}
	}
	sortKeys(want)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("policies:\n got  %v\n want %v", got, want)
	}
}

func TestPolicyWriters(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, w Writer) {
		a := Key{Endpoint: 7, Peer: 9, Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 80}
		aNorm := a
		aNorm.EndPort = 80
		b := Key{Endpoint: 7, Peer: AnyPeer, Direction: datapath.Egress}
		c := Key{Endpoint: 8, Peer: 9, Direction: datapath.Egress, Protocol: datapath.UDP, Port: 1000, EndPort: 2000}

		dptest.NoErr(t, w.UpsertPolicy(a))
		dptest.NoErr(t, w.UpsertPolicy(aNorm)) // the same key
		dptest.NoErr(t, w.ApplyPolicy([]Change{{Key: b, Add: true}, {Key: c, Add: true}, {Key: c}, {Key: c, Add: true}}))
		wantPolicies(t, w, aNorm, b, c)
		dptest.NoErr(t, w.DeletePolicy(a))
		dptest.NoErr(t, w.DeletePolicy(a)) // absent: fine
		wantPolicies(t, w, b, c)
		dptest.NoErr(t, w.SyncPolicy([]Key{a, a, c}))
		wantPolicies(t, w, aNorm, c)
		dptest.NoErr(t, w.SyncPolicy(nil))
		wantPolicies(t, w)

		// Invalid keys: nothing of the batch is written.
		for _, bad := range []Key{
			{Endpoint: 0, Peer: 1},
			{Endpoint: 1, Direction: 2},
			{Endpoint: 1, EndPort: 80},
			{Endpoint: 1, Protocol: datapath.TCP, Port: 90, EndPort: 80},
			{Endpoint: 1, Protocol: 1, Port: 8},
		} {
			err := w.ApplyPolicy([]Change{{Key: a, Add: true}, {Key: bad, Add: true}})
			dptest.ErrIs(t, err, ErrInvalidPolicy)
			dptest.ErrIs(t, w.SyncPolicy([]Key{bad}), ErrInvalidPolicy)
		}
		wantPolicies(t, w)
	})
}

func TestPolicyKeyEntries(t *testing.T) {
	// Every range splits into aligned blocks that cover it exactly.
	r := rand.New(rand.NewPCG(1, 2))
	check := func(lo, hi uint16) {
		k := Key{Endpoint: 1, Peer: 2, Protocol: datapath.TCP, Port: lo, EndPort: hi}
		es := k.entries(nil)
		if len(es) > 30 {
			t.Errorf("[%d, %d]: %d entries, more than 30", lo, hi, len(es))
		}
		next := uint32(lo)
		for _, e := range es {
			bitsLen := e.PrefixLen - policyPrefixProto
			size := uint32(1) << (16 - bitsLen)
			start := uint32(bpfmap.Ntohs(e.Port))
			if start != next || start%size != 0 || e.Proto != uint8(datapath.TCP) || e.Endpoint != 1 || e.Peer != 2 {
				t.Fatalf("[%d, %d]: entry %+v (block of %d) after %d", lo, hi, e, size, next)
			}
			next = start + size
		}
		if next != uint32(hi)+1 {
			t.Fatalf("[%d, %d]: blocks end at %d", lo, hi, next-1)
		}
	}
	check(1, 65535)
	check(65535, 65535)
	check(1, 1)
	check(32768, 65535)
	for range 2000 {
		lo := uint16(1 + r.IntN(65535))
		hi := lo + uint16(r.IntN(int(65535-lo)+1))
		check(lo, hi)
	}
	if es := (Key{Endpoint: 1, Peer: 2}).entries(nil); len(es) != 1 || es[0].PrefixLen != policyPrefixFixed {
		t.Errorf("any protocol, any port: %+v", es)
	}
	if es := (Key{Endpoint: 1, Peer: 2, Port: 53, EndPort: 53}).entries(nil); len(es) != 3 || es[2].Proto != uint8(datapath.SCTP) || es[0].PrefixLen != policyPrefixFull {
		t.Errorf("any protocol, port 53: %+v", es)
	}
	if es := (Key{Endpoint: 1, Peer: 2, Protocol: datapath.UDP}).entries(nil); len(es) != 1 || es[0].PrefixLen != policyPrefixProto {
		t.Errorf("UDP, any port: %+v", es)
	}
}

// TestPolicyRestart: new Programs on the same pins keep enforcing the old
// entries until SyncPolicy replaces them; the flow config survives.
func TestPolicyRestart(t *testing.T) {
	mesh, m := openTest(t, Config{})
	old := Key{Endpoint: 5, Peer: AnyPeer, Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 22}
	kept := Key{Endpoint: 5, Peer: 6, Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 80, EndPort: 80}
	dptest.NoErr(t, m.ApplyPolicy([]Change{{Key: old, Add: true}, {Key: kept, Add: true}}))
	dptest.NoErr(t, m.SetFlowConfig(flows.Config{SampleRate: 10, ClusterID: 3}))
	dptest.NoErr(t, m.Close())

	m2 := openPrograms(t, mesh, m.Config())
	wantPolicies(t, m2) // this run wrote nothing yet...
	if n := len(rawPolicy(t, m2)); n != 2 {
		t.Fatalf("%d entries pinned, want 2 (still enforced)", n) // ...but the kernel still holds them
	}
	if fc, err := m2.FlowConfig(); err != nil || fc != (flows.Config{SampleRate: 10, ClusterID: 3}) {
		t.Fatalf("flow config after restart: %+v, %v", fc, err)
	}
	if !anyPeerFlag(m2) {
		t.Fatalf("the any-peer flag was lost")
	}
	// Claiming a pinned entry writes nothing and then owns it.
	dptest.NoErr(t, m2.UpsertPolicy(kept))
	dptest.NoErr(t, m2.SyncPolicy([]Key{kept}))
	raw := rawPolicy(t, m2)
	if len(raw) != 1 {
		t.Fatalf("after sync: %v", raw)
	}
	if anyPeerFlag(m2) {
		t.Fatalf("the any-peer flag outlived its last entry")
	}
	wantPolicies(t, m2, kept)
}

func TestPolicyFull(t *testing.T) {
	_, m := openTest(t, Config{MaxPolicy: 16, MaxPolicyCT: 1 << 10, FlowRingBytes: 1 << 14})
	// 1-65535 is 16 blocks for TCP; one more entry does not fit.
	dptest.NoErr(t, m.UpsertPolicy(Key{Endpoint: 1, Peer: 2, Protocol: datapath.TCP, Port: 1, EndPort: 65535}))
	err := m.UpsertPolicy(Key{Endpoint: 1, Peer: 3})
	dptest.WantFull(t, err, "max-policy-entries")
	wantPolicies(t, m, Key{Endpoint: 1, Peer: 2, Protocol: datapath.TCP, Port: 1, EndPort: 65535})
}

func TestPolicyClosed(t *testing.T) {
	mesh, m := openTest(t, Config{})
	dptest.NoErr(t, m.Close())
	dptest.ErrIs(t, m.UpsertPolicy(Key{Endpoint: 1}), datapath.ErrClosed)
	_, err := m.OpenFlows()
	dptest.ErrIs(t, err, datapath.ErrClosed)
	dptest.ErrIs(t, m.Attach(1, 5, true, true), datapath.ErrClosed)
	d := NewMemory()
	dptest.NoErr(t, d.Close())
	dptest.ErrIs(t, d.UpsertPolicy(Key{Endpoint: 1}), datapath.ErrClosed)
	// Closed mesh maps: nothing to open the policy maps beside.
	dptest.NoErr(t, mesh.Close())
	_, err = Open(mesh, Config{})
	dptest.ErrIs(t, err, datapath.ErrClosed)
}

// keepCluster2 keeps the peers of cluster 2 (a 255-cluster mesh: id>>16).
func keepCluster2(peer uint32) bool { return peer>>16 == 2 }

// TestPolicySyncKeeping: a sync keeping a predicate's peers keeps the keys
// written for them and replaces everything else; a plain sync drops them.
func TestPolicySyncKeeping(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, w Writer) {
		west := Key{Endpoint: 0x10001, Peer: 0x20005, Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 8000, EndPort: 8100}
		north := Key{Endpoint: 0x10001, Peer: 0x30007, Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 8080, EndPort: 8080}
		east := Key{Endpoint: 0x10001, Peer: 0x10002, Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 8080, EndPort: 8080}
		dptest.NoErr(t, w.ApplyPolicy([]Change{{Key: west, Add: true}, {Key: north, Add: true}}))
		dptest.NoErr(t, w.SyncPolicyKeeping([]Key{east}, keepCluster2))
		wantPolicies(t, w, west, east)
		dptest.ErrIs(t, w.SyncPolicyKeeping([]Key{{Endpoint: 0}}, keepCluster2), ErrInvalidPolicy)
		wantPolicies(t, w, west, east)
		dptest.NoErr(t, w.SyncPolicyKeeping([]Key{east}, nil)) // nil keeps nothing
		wantPolicies(t, w, east)
		dptest.NoErr(t, w.ApplyPolicy([]Change{{Key: west, Add: true}}))
		dptest.NoErr(t, w.SyncPolicy([]Key{east}))
		wantPolicies(t, w, east)
	})
}

// TestPolicySyncKeepingRestart: after a restart, the previous run's kernel
// entries for the kept peers (a range expanded into several trie entries)
// stay and keep allowing packets, while the rest is replaced; a later
// plain SyncPolicy removes them.
func TestPolicySyncKeepingRestart(t *testing.T) {
	cfg := Config{MaxPolicy: 1 << 12, MaxPolicyCT: 1 << 12, FlowRingBytes: 1 << 16}
	const eastPeer = 0x10002 // 10.1.0.2
	west := allow(progPeerA, datapath.Ingress, datapath.TCP, 8000, 8100)
	north := allow(progPeerB, datapath.Ingress, datapath.TCP, 8080, 0)
	anyPeer := allow(AnyPeer, datapath.Ingress, datapath.TCP, 22, 0)
	east := allow(eastPeer, datapath.Ingress, datapath.TCP, 8080, 8080)
	mesh, m := openTest(t, cfg) // unpins at the end
	dptest.NoErr(t, mesh.UpsertIPCache(netip.MustParsePrefix("10.2.0.5/32"), datapath.IPCacheEntry{Identity: progPeerA, ClusterID: 2}))
	dptest.NoErr(t, mesh.UpsertIPCache(netip.MustParsePrefix("10.3.0.0/16"), datapath.IPCacheEntry{Identity: progPeerB, ClusterID: 3}))
	dptest.NoErr(t, mesh.UpsertIPCache(netip.MustParsePrefix("10.1.0.2/32"), datapath.IPCacheEntry{Identity: eastPeer, ClusterID: 1}))
	dptest.NoErr(t, m.ApplyPolicy([]Change{{Key: west, Add: true}, {Key: north, Add: true}, {Key: anyPeer, Add: true}}))
	dptest.NoErr(t, m.Close())

	m2 := openPrograms(t, mesh, cfg)
	dptest.NoErr(t, m2.SetStrict(true)) // every packet looked up
	e := &progEnv{mesh: mesh, m: m2, progs: loadTestPolicyProgs(t, m2)}
	setTestEndpoint(t, m2, 1, progEP, true, false)
	e.want(t, datapath.Ingress, ingress4("10.2.0.5:1000", 8050, datapath.TCP), tcActUnspec, "west before the sync")
	e.want(t, datapath.Ingress, ingress4("10.3.0.1:1000", 8080, datapath.TCP), tcActUnspec, "north before the sync")

	dptest.NoErr(t, m2.SyncPolicyKeeping([]Key{east}, keepCluster2))
	wantRaw := map[policyKey]struct{}{}
	for _, k := range []Key{west, east} {
		for _, en := range k.entries(nil) {
			wantRaw[en] = struct{}{}
		}
	}
	if len(wantRaw) < 3 {
		t.Fatalf("west's range should expand into several entries: %v", wantRaw)
	}
	if raw := rawPolicy(t, m2); !reflect.DeepEqual(raw, wantRaw) {
		t.Fatalf("kernel entries after the keeping sync:\n got  %v\n want %v (west's kept, east's written, the rest gone)", raw, wantRaw)
	}
	wantPolicies(t, m2, east) // the kept entries are the previous run's, not keys of this one
	if anyPeerFlag(m2) {
		t.Fatal("the any-peer flag outlived its last entry")
	}
	for _, c := range []struct {
		what string
		pkt  []byte
		want int32
	}{
		{"west, kept, port 8000", ingress4("10.2.0.5:1000", 8000, datapath.TCP), tcActUnspec},
		{"west, kept, port 8100", ingress4("10.2.0.5:1000", 8100, datapath.TCP), tcActUnspec},
		{"west, port 8101 (never allowed)", ingress4("10.2.0.5:1000", 8101, datapath.TCP), tcActShot},
		{"east, written", ingress4("10.1.0.2:1000", 8080, datapath.TCP), tcActUnspec},
		{"north, removed", ingress4("10.3.0.1:1000", 8080, datapath.TCP), tcActShot},
		{"any peer 22, removed", ingress4("10.3.0.1:1000", 22, datapath.TCP), tcActShot},
	} {
		e.want(t, datapath.Ingress, c.pkt, c.want, c.what)
	}

	// A kept entry claimed by a key of this run writes nothing and is then
	// this run's; keys of this run for kept peers stay keys.
	west53 := allow(progPeerA, datapath.Ingress, datapath.UDP, 53, 53)
	dptest.NoErr(t, m2.ApplyPolicy([]Change{{Key: west, Add: true}, {Key: west53, Add: true}}))
	dptest.NoErr(t, m2.SyncPolicyKeeping([]Key{east}, keepCluster2))
	wantPolicies(t, m2, west, west53, east)
	if raw := rawPolicy(t, m2); len(raw) != len(wantRaw)+1 {
		t.Fatalf("kernel entries %v, want west's, west's datapath.UDP 53 and east's", raw)
	}

	// West synced: a plain sync removes what it no longer needs.
	dptest.NoErr(t, m2.SyncPolicy([]Key{east}))
	wantRaw = map[policyKey]struct{}{}
	for _, en := range east.entries(nil) {
		wantRaw[en] = struct{}{}
	}
	if raw := rawPolicy(t, m2); !reflect.DeepEqual(raw, wantRaw) {
		t.Fatalf("kernel entries after the plain sync: %v, want east's only", raw)
	}
	e.want(t, datapath.Ingress, ingress4("10.2.0.5:1000", 8050, datapath.TCP), tcActShot, "west after the plain sync")
	e.want(t, datapath.Ingress, ingress4("10.1.0.2:1000", 8080, datapath.TCP), tcActUnspec, "east after the plain sync")
}
