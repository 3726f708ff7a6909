package datapath

import (
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Tests of the policy writers (both implementations) and of the key
// expansion; the programs are tested in policy_prog_test.go.

// policyImpls are the PolicyWriters under test.
var policyImpls = []struct {
	name string
	open func(t *testing.T) PolicyWriter
}{
	{"ebpf", func(t *testing.T) PolicyWriter {
		cfg := smallConfig("")
		cfg.MaxPolicy, cfg.MaxPolicyCT, cfg.FlowRingBytes = 1<<12, 1<<10, 1<<14
		return openTestMaps(t, cfg)
	}},
	{"memory", func(t *testing.T) PolicyWriter { return NewMemory() }},
}

func forEachPolicy(t *testing.T, fn func(t *testing.T, w PolicyWriter)) {
	for _, impl := range policyImpls {
		t.Run(impl.name, func(t *testing.T) { fn(t, impl.open(t)) })
	}
}

func wantPolicies(t testing.TB, w PolicyWriter, want ...PolicyKey) {
	t.Helper()
	got, err := w.Policies()
	mustNoErr(t, err)
	if want == nil {
		want = []PolicyKey{}
	}
	sortPolicyKeys(want)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("policies:\n got  %v\n want %v", got, want)
	}
}

func TestPolicyWriters(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, w PolicyWriter) {
		a := PolicyKey{Endpoint: 7, Peer: 9, Direction: Ingress, Protocol: TCP, Port: 80}
		aNorm := a
		aNorm.EndPort = 80
		b := PolicyKey{Endpoint: 7, Peer: AnyPeer, Direction: Egress}
		c := PolicyKey{Endpoint: 8, Peer: 9, Direction: Egress, Protocol: UDP, Port: 1000, EndPort: 2000}

		mustNoErr(t, w.UpsertPolicy(a))
		mustNoErr(t, w.UpsertPolicy(aNorm)) // the same key
		mustNoErr(t, w.ApplyPolicy([]PolicyChange{{Key: b, Add: true}, {Key: c, Add: true}, {Key: c}, {Key: c, Add: true}}))
		wantPolicies(t, w, aNorm, b, c)
		mustNoErr(t, w.DeletePolicy(a))
		mustNoErr(t, w.DeletePolicy(a)) // absent: fine
		wantPolicies(t, w, b, c)
		mustNoErr(t, w.SyncPolicy([]PolicyKey{a, a, c}))
		wantPolicies(t, w, aNorm, c)
		mustNoErr(t, w.SyncPolicy(nil))
		wantPolicies(t, w)

		// Invalid keys: nothing of the batch is written.
		for _, bad := range []PolicyKey{
			{Endpoint: 0, Peer: 1},
			{Endpoint: 1, Direction: 2},
			{Endpoint: 1, EndPort: 80},
			{Endpoint: 1, Protocol: TCP, Port: 90, EndPort: 80},
			{Endpoint: 1, Protocol: 1, Port: 8},
		} {
			err := w.ApplyPolicy([]PolicyChange{{Key: a, Add: true}, {Key: bad, Add: true}})
			wantErrIs(t, err, ErrInvalidPolicy)
			wantErrIs(t, w.SyncPolicy([]PolicyKey{bad}), ErrInvalidPolicy)
		}
		wantPolicies(t, w)
	})
}

func TestPolicyKeyEntries(t *testing.T) {
	// Every range splits into aligned blocks that cover it exactly.
	r := rand.New(rand.NewPCG(1, 2))
	check := func(lo, hi uint16) {
		k := PolicyKey{Endpoint: 1, Peer: 2, Protocol: TCP, Port: lo, EndPort: hi}
		es := k.entries(nil)
		if len(es) > 30 {
			t.Errorf("[%d, %d]: %d entries, more than 30", lo, hi, len(es))
		}
		next := uint32(lo)
		for _, e := range es {
			bitsLen := e.PrefixLen - policyPrefixProto
			size := uint32(1) << (16 - bitsLen)
			start := uint32(bpfmap.Ntohs(e.Port))
			if start != next || start%size != 0 || e.Proto != uint8(TCP) || e.Endpoint != 1 || e.Peer != 2 {
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
	if es := (PolicyKey{Endpoint: 1, Peer: 2}).entries(nil); len(es) != 1 || es[0].PrefixLen != policyPrefixFixed {
		t.Errorf("any protocol, any port: %+v", es)
	}
	if es := (PolicyKey{Endpoint: 1, Peer: 2, Port: 53, EndPort: 53}).entries(nil); len(es) != 3 || es[2].Proto != uint8(SCTP) || es[0].PrefixLen != policyPrefixFull {
		t.Errorf("any protocol, port 53: %+v", es)
	}
	if es := (PolicyKey{Endpoint: 1, Peer: 2, Protocol: UDP}).entries(nil); len(es) != 1 || es[0].PrefixLen != policyPrefixProto {
		t.Errorf("UDP, any port: %+v", es)
	}
}

// TestPolicyRestart: a new Maps on the same pins keeps enforcing the old
// entries until SyncPolicy replaces them; the flow config survives.
func TestPolicyRestart(t *testing.T) {
	cfg := smallConfig(testPinDir(t))
	cfg.MaxPolicy, cfg.MaxPolicyCT, cfg.FlowRingBytes = 1<<12, 1<<10, 1<<14
	m := openTestMaps(t, cfg)
	old := PolicyKey{Endpoint: 5, Peer: AnyPeer, Direction: Ingress, Protocol: TCP, Port: 22}
	kept := PolicyKey{Endpoint: 5, Peer: 6, Direction: Ingress, Protocol: TCP, Port: 80, EndPort: 80}
	mustNoErr(t, m.ApplyPolicy([]PolicyChange{{Key: old, Add: true}, {Key: kept, Add: true}}))
	mustNoErr(t, m.SetFlowConfig(FlowConfig{SampleRate: 10, ClusterID: 3}))
	mustNoErr(t, m.Close())

	m2, err := OpenMaps(cfg)
	mustNoErr(t, err)
	defer m2.Close()
	wantPolicies(t, m2) // this run wrote nothing yet...
	if n := len(rawPolicy(t, m2)); n != 2 {
		t.Fatalf("%d entries pinned, want 2 (still enforced)", n) // ...but the kernel still holds them
	}
	if fc, err := m2.FlowConfig(); err != nil || fc != (FlowConfig{SampleRate: 10, ClusterID: 3}) {
		t.Fatalf("flow config after restart: %+v, %v", fc, err)
	}
	m2.mu.Lock()
	ps, _ := m2.policyLocked("test")
	anyPeer := ps.cfg.Flags&cfgHasAnyPeer != 0
	m2.mu.Unlock()
	if !anyPeer {
		t.Fatalf("the any-peer flag was lost")
	}
	// Claiming a pinned entry writes nothing and then owns it.
	mustNoErr(t, m2.UpsertPolicy(kept))
	mustNoErr(t, m2.SyncPolicy([]PolicyKey{kept}))
	raw := rawPolicy(t, m2)
	if len(raw) != 1 {
		t.Fatalf("after sync: %v", raw)
	}
	m2.mu.Lock()
	anyPeer = ps.cfg.Flags&cfgHasAnyPeer != 0
	m2.mu.Unlock()
	if anyPeer {
		t.Fatalf("the any-peer flag outlived its last entry")
	}
	wantPolicies(t, m2, kept)
}

func TestPolicyFull(t *testing.T) {
	cfg := smallConfig("")
	cfg.MaxPolicy, cfg.MaxPolicyCT, cfg.FlowRingBytes = 16, 1<<10, 1<<14
	m := openTestMaps(t, cfg)
	// 1-65535 is 16 blocks for TCP; one more entry does not fit.
	mustNoErr(t, m.UpsertPolicy(PolicyKey{Endpoint: 1, Peer: 2, Protocol: TCP, Port: 1, EndPort: 65535}))
	err := m.UpsertPolicy(PolicyKey{Endpoint: 1, Peer: 3})
	wantFull(t, err, "max-policy-entries")
	wantPolicies(t, m, PolicyKey{Endpoint: 1, Peer: 2, Protocol: TCP, Port: 1, EndPort: 65535})
}

func TestPolicyClosed(t *testing.T) {
	m := openTestMaps(t, smallConfig(""))
	mustNoErr(t, m.Close())
	wantErrIs(t, m.UpsertPolicy(PolicyKey{Endpoint: 1}), ErrClosed)
	_, err := OpenFlows(m)
	wantErrIs(t, err, ErrClosed)
	wantErrIs(t, AttachPolicy(m, 1, 5, true, true), ErrClosed)
	d := NewMemory()
	mustNoErr(t, d.Close())
	wantErrIs(t, d.UpsertPolicy(PolicyKey{Endpoint: 1}), ErrClosed)
}

func TestDecodeFlowShort(t *testing.T) {
	if _, ok := decodeFlow(make([]byte, flowEventSize-1), nil); ok {
		t.Fatal("decoded a short event")
	}
}

// keepCluster2 keeps the peers of cluster 2 (a 255-cluster mesh: id>>16).
func keepCluster2(peer uint32) bool { return peer>>16 == 2 }

// TestPolicySyncKeeping: a sync keeping a predicate's peers keeps the keys
// written for them and replaces everything else; a plain sync drops them.
func TestPolicySyncKeeping(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, w PolicyWriter) {
		west := PolicyKey{Endpoint: 0x10001, Peer: 0x20005, Direction: Ingress, Protocol: TCP, Port: 8000, EndPort: 8100}
		north := PolicyKey{Endpoint: 0x10001, Peer: 0x30007, Direction: Ingress, Protocol: TCP, Port: 8080, EndPort: 8080}
		east := PolicyKey{Endpoint: 0x10001, Peer: 0x10002, Direction: Ingress, Protocol: TCP, Port: 8080, EndPort: 8080}
		mustNoErr(t, w.ApplyPolicy([]PolicyChange{{Key: west, Add: true}, {Key: north, Add: true}}))
		mustNoErr(t, w.SyncPolicyKeeping([]PolicyKey{east}, keepCluster2))
		wantPolicies(t, w, west, east)
		wantErrIs(t, w.SyncPolicyKeeping([]PolicyKey{{Endpoint: 0}}, keepCluster2), ErrInvalidPolicy)
		wantPolicies(t, w, west, east)
		mustNoErr(t, w.SyncPolicyKeeping([]PolicyKey{east}, nil)) // nil keeps nothing
		wantPolicies(t, w, east)
		mustNoErr(t, w.ApplyPolicy([]PolicyChange{{Key: west, Add: true}}))
		mustNoErr(t, w.SyncPolicy([]PolicyKey{east}))
		wantPolicies(t, w, east)
	})
}

// TestPolicySyncKeepingRestart: after a restart, the previous run's kernel
// entries for the kept peers (a range expanded into several trie entries)
// stay and keep allowing packets, while the rest is replaced; a later
// plain SyncPolicy removes them.
func TestPolicySyncKeepingRestart(t *testing.T) {
	cfg := smallConfig(testPinDir(t))
	cfg.MaxPolicy, cfg.MaxPolicyCT, cfg.FlowRingBytes = 1<<12, 1<<12, 1<<16
	const eastPeer = 0x10002 // 10.1.0.2
	west := allow(progPeerA, Ingress, TCP, 8000, 8100)
	north := allow(progPeerB, Ingress, TCP, 8080, 0)
	anyPeer := allow(AnyPeer, Ingress, TCP, 22, 0)
	east := allow(eastPeer, Ingress, TCP, 8080, 8080)
	m := openTestMaps(t, cfg) // unpins at the end
	mustNoErr(t, m.UpsertIPCache(pfx("10.2.0.5/32"), IPCacheEntry{Identity: progPeerA, ClusterID: 2}))
	mustNoErr(t, m.UpsertIPCache(pfx("10.3.0.0/16"), IPCacheEntry{Identity: progPeerB, ClusterID: 3}))
	mustNoErr(t, m.UpsertIPCache(pfx("10.1.0.2/32"), IPCacheEntry{Identity: eastPeer, ClusterID: 1}))
	mustNoErr(t, m.ApplyPolicy([]PolicyChange{{Key: west, Add: true}, {Key: north, Add: true}, {Key: anyPeer, Add: true}}))
	mustNoErr(t, m.Close())

	m2, err := OpenMaps(cfg)
	mustNoErr(t, err)
	defer m2.Close()
	mustNoErr(t, m2.SetPolicyStrict(true)) // every packet looked up
	e := &progEnv{m: m2, progs: loadTestPolicyProgs(t, m2)}
	setTestEndpoint(t, m2, 1, progEP, true, false)
	e.want(t, Ingress, ingress4("10.2.0.5:1000", 8050, TCP), tcActUnspec, "west before the sync")
	e.want(t, Ingress, ingress4("10.3.0.1:1000", 8080, TCP), tcActUnspec, "north before the sync")

	mustNoErr(t, m2.SyncPolicyKeeping([]PolicyKey{east}, keepCluster2))
	wantRaw := map[policyKey]struct{}{}
	for _, k := range []PolicyKey{west, east} {
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
	m2.mu.Lock()
	ps, _ := m2.policyLocked("test")
	anyPeerFlag := ps.cfg.Flags&cfgHasAnyPeer != 0
	m2.mu.Unlock()
	if anyPeerFlag {
		t.Fatal("the any-peer flag outlived its last entry")
	}
	for _, c := range []struct {
		what string
		pkt  []byte
		want int32
	}{
		{"west, kept, port 8000", ingress4("10.2.0.5:1000", 8000, TCP), tcActUnspec},
		{"west, kept, port 8100", ingress4("10.2.0.5:1000", 8100, TCP), tcActUnspec},
		{"west, port 8101 (never allowed)", ingress4("10.2.0.5:1000", 8101, TCP), tcActShot},
		{"east, written", ingress4("10.1.0.2:1000", 8080, TCP), tcActUnspec},
		{"north, removed", ingress4("10.3.0.1:1000", 8080, TCP), tcActShot},
		{"any peer 22, removed", ingress4("10.3.0.1:1000", 22, TCP), tcActShot},
	} {
		e.want(t, Ingress, c.pkt, c.want, c.what)
	}

	// A kept entry claimed by a key of this run writes nothing and is then
	// this run's; keys of this run for kept peers stay keys.
	west53 := allow(progPeerA, Ingress, UDP, 53, 53)
	mustNoErr(t, m2.ApplyPolicy([]PolicyChange{{Key: west, Add: true}, {Key: west53, Add: true}}))
	mustNoErr(t, m2.SyncPolicyKeeping([]PolicyKey{east}, keepCluster2))
	wantPolicies(t, m2, west, west53, east)
	if raw := rawPolicy(t, m2); len(raw) != len(wantRaw)+1 {
		t.Fatalf("kernel entries %v, want west's, west's UDP 53 and east's", raw)
	}

	// West synced: a plain sync removes what it no longer needs.
	mustNoErr(t, m2.SyncPolicy([]PolicyKey{east}))
	wantRaw = map[policyKey]struct{}{}
	for _, en := range east.entries(nil) {
		wantRaw[en] = struct{}{}
	}
	if raw := rawPolicy(t, m2); !reflect.DeepEqual(raw, wantRaw) {
		t.Fatalf("kernel entries after the plain sync: %v, want east's only", raw)
	}
	e.want(t, Ingress, ingress4("10.2.0.5:1000", 8050, TCP), tcActShot, "west after the plain sync")
	e.want(t, Ingress, ingress4("10.1.0.2:1000", 8080, TCP), tcActUnspec, "east after the plain sync")
}
