package datapath

import (
	"math/rand/v2"
	"reflect"
	"testing"
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
			start := uint32(ntohs(e.Port))
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
