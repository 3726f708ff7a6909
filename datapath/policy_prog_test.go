package datapath

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Tests of the policy programs on crafted packets (BPF_PROG_TEST_RUN: the
// programs run on the loopback, ifindex 1, where setTestEndpoint records
// the endpoint). Real traffic through veths is in policy_env_test.go.

const (
	tcActUnspec = -1
	tcActShot   = 2
)

const (
	progEP      = 0x10001 // the local endpoint's identity, cluster 1
	progPeerA   = 0x20005 // 10.2.0.5, fd00:2::5: cluster 2
	progPeerB   = 0x30007 // 10.3.0.0/16: cluster 3
	progEPAddr4 = "10.1.0.1"
)

// progEnv is maps with the ipcache entries above, the programs loaded, the
// endpoint recorded for ifindex 1 (both directions enforced), and a flow
// reader.
type progEnv struct {
	m     *Maps
	progs *testPolicyProgs
	fr    *FlowReader
}

func newProgEnv(t *testing.T) *progEnv {
	t.Helper()
	cfg := smallConfig("")
	cfg.MaxPolicy, cfg.MaxPolicyCT, cfg.FlowRingBytes = 1<<12, 1<<12, 1<<16
	e := &progEnv{m: openTestMaps(t, cfg)}
	mustNoErr(t, e.m.UpsertIPCache(pfx("10.2.0.5/32"), IPCacheEntry{Identity: progPeerA, ClusterID: 2, TunnelEndpoint: addr("192.168.2.1")}))
	mustNoErr(t, e.m.UpsertIPCache(pfx("fd00:2::5/128"), IPCacheEntry{Identity: progPeerA, ClusterID: 2}))
	mustNoErr(t, e.m.UpsertIPCache(pfx("10.3.0.0/16"), IPCacheEntry{Identity: progPeerB, ClusterID: 3}))
	mustNoErr(t, e.m.UpsertIPCache(pfx("10.1.0.1/32"), IPCacheEntry{Identity: progEP, ClusterID: 1}))
	mustNoErr(t, e.m.SetFlowConfig(FlowConfig{ClusterID: 1}))
	e.progs = loadTestPolicyProgs(t, e.m)
	setTestEndpoint(t, e.m, 1, progEP, true, true)
	fr, err := OpenFlows(e.m)
	mustNoErr(t, err)
	t.Cleanup(func() { fr.Close() })
	e.fr = fr
	return e
}

// run passes pkt through the program of dir (the endpoint's direction) and
// returns its verdict.
func (e *progEnv) run(t testing.TB, dir Direction, pkt []byte) int32 {
	t.Helper()
	prog := e.progs.ToEp
	if dir == Egress {
		prog = e.progs.FromEp
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: pkt})
	mustNoErr(t, err)
	return int32(ret)
}

func (e *progEnv) want(t testing.TB, dir Direction, pkt []byte, want int32, what string) {
	t.Helper()
	if got := e.run(t, dir, pkt); got != want {
		t.Fatalf("%s: verdict %d, want %d", what, got, want)
	}
}

// egress4 is a packet from the endpoint to dst; ingress4 from src to it.
func egress4(dst string, proto Protocol) []byte {
	return testPacket(ap(progEPAddr4+":40000"), ap(dst), proto, 0x02)
}

func ingress4(src string, dport uint16, proto Protocol) []byte {
	return testPacket(ap(src), netip.AddrPortFrom(addr(progEPAddr4), dport), proto, 0x02)
}

// flow reads the next flow event (failing after 5 s).
func (e *progEnv) flow(t testing.TB) Flow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := e.fr.Read(ctx)
	mustNoErr(t, err)
	return f
}

// noFlow checks that no event is pending.
func (e *progEnv) noFlow(t testing.TB) {
	t.Helper()
	if n := e.fr.Pending(); n != 0 {
		f := e.flow(t)
		t.Fatalf("unexpected flow event (%d bytes pending): %+v", n, f)
	}
}

func allow(peer uint32, dir Direction, proto Protocol, port, end uint16) PolicyKey {
	return PolicyKey{Endpoint: progEP, Peer: peer, Direction: dir, Protocol: proto, Port: port, EndPort: end}
}

func TestPolicyProgramVerdicts(t *testing.T) {
	e := newProgEnv(t)
	m := e.m
	mustNoErr(t, m.UpsertPolicy(allow(progPeerA, Egress, TCP, 80, 0)))

	e.want(t, Egress, egress4("10.2.0.5:80", TCP), tcActUnspec, "allowed TCP 80")
	e.noFlow(t) // forwarded packets are not reported at sample rate 0
	e.want(t, Egress, egress4("10.2.0.5:81", TCP), tcActShot, "TCP 81")
	f := e.flow(t)
	want := Flow{
		Verdict: VerdictDropped, DropReason: DropPolicyDenied, Direction: Egress, Ifindex: 1,
		Src: ap(progEPAddr4 + ":40000"), Dst: ap("10.2.0.5:81"), Protocol: TCP,
		SrcIdentity: progEP, DstIdentity: progPeerA, SrcCluster: 1, DstCluster: 2,
		Bytes: 54,
	}
	if f.Time.IsZero() || time.Since(f.Time).Abs() > time.Minute {
		t.Errorf("flow time %v, want about now", f.Time)
	}
	f.Time = time.Time{}
	if f != want {
		t.Fatalf("drop event\n got  %+v\n want %+v", f, want)
	}
	e.want(t, Egress, egress4("10.2.0.5:80", UDP), tcActShot, "UDP 80")
	if f := e.flow(t); f.Protocol != UDP || f.Verdict != VerdictDropped {
		t.Fatalf("UDP drop event %+v", f)
	}
	// Ingress is enforced too: nothing allows it.
	e.want(t, Ingress, ingress4("10.2.0.5:5000", 80, TCP), tcActShot, "ingress TCP 80")
	f = e.flow(t)
	if f.Direction != Ingress || f.SrcIdentity != progPeerA || f.SrcCluster != 2 || f.DstIdentity != progEP || f.DstCluster != 1 {
		t.Fatalf("ingress drop event %+v", f)
	}
	// An address the ipcache does not know is the world.
	e.want(t, Egress, egress4("192.0.2.1:80", TCP), tcActShot, "world")
	if f := e.flow(t); f.DstIdentity != IdentityWorld || f.DstCluster != 0 {
		t.Fatalf("world drop event %+v", f)
	}
	mustNoErr(t, m.UpsertPolicy(allow(IdentityWorld, Egress, TCP, 80, 0)))
	e.want(t, Egress, egress4("192.0.2.1:80", TCP), tcActUnspec, "world allowed")
	// A /16 entry gives the identity of the addresses it covers.
	e.want(t, Egress, egress4("10.3.9.9:80", TCP), tcActShot, "cluster 3 peer")
	if f := e.flow(t); f.DstIdentity != progPeerB || f.DstCluster != 3 {
		t.Fatalf("cluster 3 drop event %+v", f)
	}

	c, err := m.PolicyCounters()
	mustNoErr(t, err)
	if c.DroppedPolicy != [2]uint64{1, 4} || c.Events != 5 || c.EventsLost != 0 || c.Forwarded[Egress] != 2 {
		t.Fatalf("counters %+v", c)
	}
}

func TestPolicyProgramPorts(t *testing.T) {
	e := newProgEnv(t)
	m := e.m
	mustNoErr(t, m.SetPolicyStrict(true)) // every packet looked up: one tuple suffices
	mustNoErr(t, m.UpsertPolicy(allow(progPeerA, Egress, TCP, 8000, 8100)))
	for port, ok := range map[uint16]bool{7999: false, 8000: true, 8001: true, 8063: true, 8064: true, 8099: true, 8100: true, 8101: false, 0: false, 65535: false} {
		want := int32(tcActShot)
		if ok {
			want = tcActUnspec
		}
		e.want(t, Egress, egress4(netip.AddrPortFrom(addr("10.2.0.5"), port).String(), TCP), want, "range 8000-8100 port "+netip.AddrPortFrom(addr("10.2.0.5"), port).String())
	}
	mustNoErr(t, m.UpsertPolicy(allow(progPeerA, Egress, AnyProtocol, 53, 0)))
	for _, p := range []Protocol{TCP, UDP, SCTP} {
		e.want(t, Egress, egress4("10.2.0.5:53", p), tcActUnspec, "any protocol, port 53: "+p.String())
	}
	e.want(t, Egress, egress4("10.2.0.5:53", 1), tcActShot, "ICMP with an any-protocol port rule")
	mustNoErr(t, m.UpsertPolicy(allow(progPeerA, Egress, UDP, 0, 0)))
	e.want(t, Egress, egress4("10.2.0.5:9999", UDP), tcActUnspec, "UDP any port")
	e.want(t, Egress, egress4("10.2.0.5:9999", TCP), tcActShot, "TCP 9999 with UDP any port")
	mustNoErr(t, m.UpsertPolicy(allow(progPeerA, Egress, AnyProtocol, 0, 0)))
	e.want(t, Egress, egress4("10.2.0.5:9999", TCP), tcActUnspec, "L3 rule: TCP")
	e.want(t, Egress, egress4("10.2.0.5:0", 1), tcActUnspec, "L3 rule: ICMP")
	// Another peer has none of it.
	e.want(t, Egress, egress4("10.3.0.1:8000", TCP), tcActShot, "other peer")
}

func TestPolicyProgramAnyPeerAndRefcounts(t *testing.T) {
	e := newProgEnv(t)
	m := e.m
	mustNoErr(t, m.SetPolicyStrict(true))
	anyPeer := allow(AnyPeer, Ingress, TCP, 443, 0)
	mustNoErr(t, m.UpsertPolicy(anyPeer))
	for _, src := range []string{"10.2.0.5:1000", "10.3.1.1:1000", "198.51.100.7:1000"} {
		e.want(t, Ingress, ingress4(src, 443, TCP), tcActUnspec, "any peer from "+src)
	}
	e.want(t, Ingress, ingress4("10.2.0.5:1000", 444, TCP), tcActShot, "any peer, other port")
	mustNoErr(t, m.DeletePolicy(anyPeer))
	e.want(t, Ingress, ingress4("10.2.0.5:1000", 443, TCP), tcActShot, "any peer removed")

	// Two keys share the block 64-127 of their ranges: removing one keeps
	// the other's ports.
	a, b := allow(progPeerA, Ingress, TCP, 64, 127), allow(progPeerA, Ingress, TCP, 64, 200)
	mustNoErr(t, m.ApplyPolicy([]PolicyChange{{Key: a, Add: true}, {Key: b, Add: true}}))
	mustNoErr(t, m.DeletePolicy(b))
	e.want(t, Ingress, ingress4("10.2.0.5:1000", 100, TCP), tcActUnspec, "shared block kept")
	e.want(t, Ingress, ingress4("10.2.0.5:1000", 150, TCP), tcActShot, "block of the removed key")
	// An any-protocol port and an explicit TCP key on it share an entry.
	c, d := allow(progPeerA, Ingress, AnyProtocol, 22, 0), allow(progPeerA, Ingress, TCP, 22, 22)
	mustNoErr(t, m.ApplyPolicy([]PolicyChange{{Key: c, Add: true}, {Key: d, Add: true}, {Key: c}}))
	e.want(t, Ingress, ingress4("10.2.0.5:1000", 22, TCP), tcActUnspec, "TCP 22 kept")
	e.want(t, Ingress, ingress4("10.2.0.5:1000", 22, UDP), tcActShot, "UDP 22 gone")
	// Left: the block 64-127 and TCP 22.
	if raw := rawPolicy(t, m); len(raw) != 2 {
		t.Fatalf("policy entries %v, want 2", raw)
	}
}

// rawPolicy dumps cm_policy.
func rawPolicy(t testing.TB, m *Maps) map[policyKey]struct{} {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := m.policyLocked("test")
	mustNoErr(t, err)
	out := map[policyKey]struct{}{}
	mustNoErr(t, bpfmap.Dump(ps.policy, func(k *policyKey, _ *policyValue) { out[*k] = struct{}{} }))
	return out
}

func TestPolicyProgramConntrack(t *testing.T) {
	e := newProgEnv(t)
	m := e.m
	key := allow(progPeerA, Ingress, TCP, 8080, 0)
	mustNoErr(t, m.UpsertPolicy(key))
	syn := ingress4("10.2.0.5:5555", 8080, TCP)
	reply := testPacket(ap(progEPAddr4+":8080"), ap("10.2.0.5:5555"), TCP, 0x12)
	e.want(t, Ingress, syn, tcActUnspec, "allowed SYN")
	// Egress is enforced and allows nothing, but this is a reply.
	e.want(t, Egress, reply, tcActUnspec, "reply")
	// The same ports the other way round without a flow: denied.
	e.want(t, Egress, testPacket(ap(progEPAddr4+":8080"), ap("10.2.0.5:5556"), TCP, 0x12), tcActShot, "unsolicited")
	e.flow(t)
	// Cached verdict, then revoked: the next packet of the flow is checked.
	e.want(t, Ingress, syn, tcActUnspec, "established")
	mustNoErr(t, m.DeletePolicy(key))
	e.want(t, Ingress, syn, tcActShot, "revoked")
	if f := e.flow(t); f.DropReason != DropPolicyDenied || f.Src != ap("10.2.0.5:5555") {
		t.Fatalf("revocation drop %+v", f)
	}
	mustNoErr(t, m.UpsertPolicy(key))
	e.want(t, Ingress, syn, tcActUnspec, "allowed again")
	// A changed endpoint (identity) makes cached verdicts stale.
	setTestEndpoint(t, m, 1, progEP+1, true, true)
	mustNoErr(t, m.RecheckFlows())
	e.want(t, Ingress, syn, tcActShot, "other identity")
	e.flow(t)
	setTestEndpoint(t, m, 1, progEP, true, true)

	// A direction not enforced allows everything, and its flows' replies
	// pass the enforced one.
	setTestEndpoint(t, m, 1, progEP, true, false)
	e.want(t, Egress, egress4("10.3.3.3:443", TCP), tcActUnspec, "egress not enforced")
	e.want(t, Ingress, testPacket(ap("10.3.3.3:443"), ap(progEPAddr4+":40000"), TCP, 0x12), tcActUnspec, "its reply")
	e.want(t, Ingress, testPacket(ap("10.3.3.3:443"), ap(progEPAddr4+":40001"), TCP, 0x12), tcActShot, "no flow")
	e.flow(t)
	e.noFlow(t)
	c, err := m.PolicyCounters()
	mustNoErr(t, err)
	if c.FlowsCreated != 2 {
		t.Errorf("%d flows created, want 2 (8080 and 443)", c.FlowsCreated)
	}
}

func TestPolicyProgramSampling(t *testing.T) {
	e := newProgEnv(t)
	m := e.m
	mustNoErr(t, m.UpsertPolicy(allow(progPeerA, Egress, UDP, 0, 0)))
	mustNoErr(t, m.SetFlowConfig(FlowConfig{SampleRate: 4, ClusterID: 1, TraceNew: true}))
	if fc, err := m.FlowConfig(); err != nil || fc != (FlowConfig{SampleRate: 4, ClusterID: 1, TraceNew: true}) {
		t.Fatalf("FlowConfig() = %+v, %v", fc, err)
	}
	pkt := egress4("10.2.0.5:53", UDP)
	// BPF_PROG_TEST_RUN runs on one CPU at a time, but not always the same:
	// run them pinned to CPU 0 through Repeat.
	_, err := e.progs.FromEp.Run(&ebpf.RunOptions{Data: pkt, Repeat: 40})
	mustNoErr(t, err)
	var sampled, fresh int
	for e.fr.Pending() > 0 {
		f := e.flow(t)
		if f.Verdict != VerdictForwarded || f.DstIdentity != progPeerA || f.SampleRate != 4 {
			t.Fatalf("forwarded event %+v", f)
		}
		if f.Sampled {
			sampled++
		}
		if f.New {
			fresh++
		}
	}
	if sampled != 10 || fresh != 1 {
		t.Fatalf("40 packets at 1 in 4: %d sampled, %d new; want 10, 1", sampled, fresh)
	}
}

// mutate returns a copy of pkt changed by fn.
func mutate(pkt []byte, fn func([]byte) []byte) []byte {
	return fn(append([]byte(nil), pkt...))
}

func TestPolicyProgramParsing(t *testing.T) {
	e := newProgEnv(t)
	m := e.m
	mustNoErr(t, m.SetPolicyStrict(true))
	mustNoErr(t, m.UpsertPolicy(allow(progPeerA, Egress, TCP, 80, 0)))

	// IPv4 with options: the slow path.
	opts := mutate(egress4("10.2.0.5:80", TCP), func(b []byte) []byte {
		out := append(append(append([]byte{}, b[:34]...), 1, 1, 1, 0), b[34:]...) // 4 bytes of NOPs + EOL
		out[14] = 0x46
		binary.BigEndian.PutUint16(out[16:], uint16(len(out)-14))
		return out
	})
	e.want(t, Egress, opts, tcActUnspec, "IPv4 options, port 80")
	opts81 := append([]byte(nil), opts...)
	binary.BigEndian.PutUint16(opts81[14+24+2:], 81)
	e.want(t, Egress, opts81, tcActShot, "IPv4 options, port 81")
	if f := e.flow(t); f.Dst != ap("10.2.0.5:81") {
		t.Fatalf("options drop %+v", f)
	}

	// A non-first fragment has no ports: only any-port entries allow it.
	frag := mutate(egress4("10.2.0.5:80", TCP), func(b []byte) []byte {
		binary.BigEndian.PutUint16(b[20:], 185) // offset 1480
		return b
	})
	e.want(t, Egress, frag, tcActShot, "fragment")
	if f := e.flow(t); !f.Fragment || f.Dst.Port() != 0 {
		t.Fatalf("fragment drop %+v", f)
	}
	// A first fragment has them.
	first := mutate(egress4("10.2.0.5:80", TCP), func(b []byte) []byte {
		binary.BigEndian.PutUint16(b[20:], 0x2000) // MF
		return b
	})
	e.want(t, Egress, first, tcActUnspec, "first fragment")

	// A truncated TCP header in an enforced direction: invalid.
	short := egress4("10.2.0.5:80", TCP)[:14+20+8]
	e.want(t, Egress, short, tcActShot, "truncated")
	if f := e.flow(t); f.DropReason != DropInvalidPacket || f.Verdict != VerdictDropped {
		t.Fatalf("truncated drop %+v", f)
	}

	// IPv6, straight and behind a hop-by-hop header.
	mustNoErr(t, m.UpsertPolicy(allow(progPeerA, Egress, TCP, 443, 0)))
	v6 := testPacket(ap("[fd00:1::1]:40000"), ap("[fd00:2::5]:443"), TCP, 0x02)
	e.want(t, Egress, v6, tcActUnspec, "IPv6 443")
	hbh := mutate(v6, func(b []byte) []byte {
		out := append(append(append([]byte{}, b[:54]...), byte(TCP), 0, 1, 4, 0, 0, 0, 0), b[54:]...) // PadN
		out[20] = 0                                                                                   // next header: hop-by-hop
		binary.BigEndian.PutUint16(out[18:], uint16(len(out)-54))
		return out
	})
	e.want(t, Egress, hbh, tcActUnspec, "IPv6 hop-by-hop, 443")
	v6deny := testPacket(ap("[fd00:1::1]:40000"), ap("[fd00:2::5]:444"), TCP, 0x02)
	e.want(t, Egress, v6deny, tcActShot, "IPv6 444")
	if f := e.flow(t); f.Dst != ap("[fd00:2::5]:444") || f.DstIdentity != progPeerA || f.DstCluster != 2 {
		t.Fatalf("IPv6 drop %+v", f)
	}

	// Neighbour discovery and ARP pass whatever the policy.
	ns := testPacket(ap("[fe80::1]:0"), ap("[ff02::1:ff00:5]:0"), 58, 0)
	ns[54] = 135
	e.want(t, Ingress, ns, tcActUnspec, "neighbour solicitation")
	arp := make([]byte, 42)
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	e.want(t, Ingress, arp, tcActUnspec, "ARP")
	// Other ICMPv6 is policy's.
	echo := testPacket(ap("[fd00:2::5]:0"), ap("[fd00:1::1]:0"), 58, 0)
	echo[54] = 128
	e.want(t, Ingress, echo, tcActShot, "ICMPv6 echo")
	e.flow(t)
	e.noFlow(t)
}

func TestPolicyProgramUnknownInterface(t *testing.T) {
	e := newProgEnv(t)
	m := e.m
	m.mu.Lock()
	ps, err := m.policyLocked("test")
	m.mu.Unlock()
	mustNoErr(t, err)
	one := uint32(1)
	mustNoErr(t, ps.endpoints.Delete(&one))
	e.want(t, Egress, egress4("10.2.0.5:81", TCP), tcActUnspec, "no endpoint recorded")
	e.noFlow(t)
}

func TestPolicyLayout(t *testing.T) {
	spec, err := loadPolicy()
	mustNoErr(t, err)
	for _, c := range []struct {
		name       string
		typ        ebpf.MapType
		key, value uint32
	}{
		{IPCacheMapName, ebpf.LPMTrie, ipcacheKeySize, ipcacheValueSize},
		{PolicyMapName, ebpf.LPMTrie, policyKeySize, policyValueSize},
		{PolicyEndpointsMapName, ebpf.Hash, 4, policyEndpointSize},
		{PolicyConfigMapName, ebpf.Array, 4, policyConfigSize},
		{PolicyCTMapName, ebpf.LRUHash, ctKeySize, ctValueSize},
		{PolicyMetricsMapName, ebpf.PerCPUArray, 4, 8},
		{FlowsMapName, ebpf.RingBuf, 0, 0},
	} {
		sm := spec.Maps[c.name]
		if sm == nil {
			t.Errorf("the programs define no map %s", c.name)
			continue
		}
		if sm.Type != c.typ || sm.KeySize != c.key || sm.ValueSize != c.value {
			t.Errorf("map %s: %v, key %d, value %d bytes; want %v, %d, %d", c.name, sm.Type, sm.KeySize, sm.ValueSize, c.typ, c.key, c.value)
		}
	}
	if sm := spec.Maps[PolicyMetricsMapName]; sm != nil && sm.MaxEntries != policyCounters {
		t.Errorf("%s has %d counters, want %d", PolicyMetricsMapName, sm.MaxEntries, policyCounters)
	}
	for _, c := range []struct {
		v    any
		want int
	}{
		{policyKey{}, policyKeySize}, {policyValue{}, policyValueSize}, {policyEndpoint{}, policyEndpointSize},
		{policyConfig{}, policyConfigSize}, {ctKey{}, ctKeySize}, {ctValue{}, ctValueSize},
	} {
		if got := binary.Size(c.v); got != c.want {
			t.Errorf("%T: %d bytes, want %d", c.v, got, c.want)
		}
	}
	// The event carries no BTF: bpf/policy.c asserts its offsets at
	// compile time, and the tests compare whole decoded events.
	if len(spec.Programs) != 3 {
		t.Errorf("%d programs, want 3", len(spec.Programs))
	}
}
