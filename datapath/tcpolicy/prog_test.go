package tcpolicy

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
	"github.com/clustermesh/clustermesh/datapath/internal/dptest"
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

// progEnv is mesh maps with the ipcache entries above and the programs' maps, the programs loaded, the
// endpoint recorded for ifindex 1 (both directions enforced), and a flow
// reader.
type progEnv struct {
	mesh  *datapath.Maps
	m     *Programs
	progs *testPolicyProgs
	fr    *flows.Reader
}

func newProgEnv(t *testing.T) *progEnv {
	t.Helper()
	e := &progEnv{}
	e.mesh, e.m = openTest(t, Config{MaxPolicy: 1 << 12, MaxPolicyCT: 1 << 12, FlowRingBytes: 1 << 16})
	dptest.NoErr(t, e.mesh.UpsertIPCache(netip.MustParsePrefix("10.2.0.5/32"), datapath.IPCacheEntry{Identity: progPeerA, ClusterID: 2, TunnelEndpoint: netip.MustParseAddr("192.168.2.1")}))
	dptest.NoErr(t, e.mesh.UpsertIPCache(netip.MustParsePrefix("fd00:2::5/128"), datapath.IPCacheEntry{Identity: progPeerA, ClusterID: 2}))
	dptest.NoErr(t, e.mesh.UpsertIPCache(netip.MustParsePrefix("10.3.0.0/16"), datapath.IPCacheEntry{Identity: progPeerB, ClusterID: 3}))
	dptest.NoErr(t, e.mesh.UpsertIPCache(netip.MustParsePrefix("10.1.0.1/32"), datapath.IPCacheEntry{Identity: progEP, ClusterID: 1}))
	dptest.NoErr(t, e.m.SetFlowConfig(flows.Config{ClusterID: 1}))
	e.progs = loadTestPolicyProgs(t, e.m)
	setTestEndpoint(t, e.m, 1, progEP, true, true)
	fr, err := e.m.OpenFlows()
	dptest.NoErr(t, err)
	t.Cleanup(func() { fr.Close() })
	e.fr = fr
	return e
}

// run passes pkt through the program of dir (the endpoint's direction) and
// returns its verdict.
func (e *progEnv) run(t testing.TB, dir datapath.Direction, pkt []byte) int32 {
	t.Helper()
	prog := e.progs.ToEp
	if dir == datapath.Egress {
		prog = e.progs.FromEp
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: pkt})
	dptest.NoErr(t, err)
	return int32(ret)
}

func (e *progEnv) want(t testing.TB, dir datapath.Direction, pkt []byte, want int32, what string) {
	t.Helper()
	if got := e.run(t, dir, pkt); got != want {
		t.Fatalf("%s: verdict %d, want %d", what, got, want)
	}
}

// egress4 is a packet from the endpoint to dst; ingress4 from src to it.
func egress4(dst string, proto datapath.Protocol) []byte {
	return testPacket(ap(progEPAddr4+":40000"), ap(dst), proto, 0x02)
}

func ingress4(src string, dport uint16, proto datapath.Protocol) []byte {
	return testPacket(ap(src), netip.AddrPortFrom(netip.MustParseAddr(progEPAddr4), dport), proto, 0x02)
}

// flow reads the next flow event (failing after 5 s).
func (e *progEnv) flow(t testing.TB) flows.Flow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := e.fr.Read(ctx)
	dptest.NoErr(t, err)
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

func allow(peer uint32, dir datapath.Direction, proto datapath.Protocol, port, end uint16) Key {
	return Key{Endpoint: progEP, Peer: peer, Direction: dir, Protocol: proto, Port: port, EndPort: end}
}

func TestPolicyProgramVerdicts(t *testing.T) {
	e := newProgEnv(t)
	m := e.m
	dptest.NoErr(t, m.UpsertPolicy(allow(progPeerA, datapath.Egress, datapath.TCP, 80, 0)))

	e.want(t, datapath.Egress, egress4("10.2.0.5:80", datapath.TCP), tcActUnspec, "allowed datapath.TCP 80")
	e.noFlow(t) // forwarded packets are not reported at sample rate 0
	e.want(t, datapath.Egress, egress4("10.2.0.5:81", datapath.TCP), tcActShot, "TCP 81")
	f := e.flow(t)
	want := flows.Flow{
		Kind: flows.KindDrop, Verdict: flows.VerdictDropped, DropReason: flows.DropPolicyDenied, Direction: datapath.Egress, Ifindex: 1,
		Src: ap(progEPAddr4 + ":40000"), Dst: ap("10.2.0.5:81"), Protocol: datapath.TCP, TCPFlags: flows.TCPFlagSYN,
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
	e.want(t, datapath.Egress, egress4("10.2.0.5:80", datapath.UDP), tcActShot, "UDP 80")
	if f := e.flow(t); f.Protocol != datapath.UDP || f.Verdict != flows.VerdictDropped {
		t.Fatalf("UDP drop event %+v", f)
	}
	// Ingress is enforced too: nothing allows it.
	e.want(t, datapath.Ingress, ingress4("10.2.0.5:5000", 80, datapath.TCP), tcActShot, "ingress datapath.TCP 80")
	f = e.flow(t)
	if f.Direction != datapath.Ingress || f.SrcIdentity != progPeerA || f.SrcCluster != 2 || f.DstIdentity != progEP || f.DstCluster != 1 {
		t.Fatalf("ingress drop event %+v", f)
	}
	// An address the ipcache does not know is the world.
	e.want(t, datapath.Egress, egress4("192.0.2.1:80", datapath.TCP), tcActShot, "world")
	if f := e.flow(t); f.DstIdentity != datapath.IdentityWorld || f.DstCluster != 0 {
		t.Fatalf("world drop event %+v", f)
	}
	dptest.NoErr(t, m.UpsertPolicy(allow(datapath.IdentityWorld, datapath.Egress, datapath.TCP, 80, 0)))
	e.want(t, datapath.Egress, egress4("192.0.2.1:80", datapath.TCP), tcActUnspec, "world allowed")
	// A /16 entry gives the identity of the addresses it covers.
	e.want(t, datapath.Egress, egress4("10.3.9.9:80", datapath.TCP), tcActShot, "cluster 3 peer")
	if f := e.flow(t); f.DstIdentity != progPeerB || f.DstCluster != 3 {
		t.Fatalf("cluster 3 drop event %+v", f)
	}

	c, err := m.Counters()
	dptest.NoErr(t, err)
	if c.DroppedPolicy != [2]uint64{1, 4} || c.Events != 5 || c.EventsLost != 0 || c.Forwarded[datapath.Egress] != 2 {
		t.Fatalf("counters %+v", c)
	}
}

func TestPolicyProgramPorts(t *testing.T) {
	e := newProgEnv(t)
	m := e.m
	dptest.NoErr(t, m.SetStrict(true)) // every packet looked up: one tuple suffices
	dptest.NoErr(t, m.UpsertPolicy(allow(progPeerA, datapath.Egress, datapath.TCP, 8000, 8100)))
	for port, ok := range map[uint16]bool{7999: false, 8000: true, 8001: true, 8063: true, 8064: true, 8099: true, 8100: true, 8101: false, 0: false, 65535: false} {
		want := int32(tcActShot)
		if ok {
			want = tcActUnspec
		}
		e.want(t, datapath.Egress, egress4(netip.AddrPortFrom(netip.MustParseAddr("10.2.0.5"), port).String(), datapath.TCP), want, "range 8000-8100 port "+netip.AddrPortFrom(netip.MustParseAddr("10.2.0.5"), port).String())
	}
	dptest.NoErr(t, m.UpsertPolicy(allow(progPeerA, datapath.Egress, AnyProtocol, 53, 0)))
	for _, p := range []datapath.Protocol{datapath.TCP, datapath.UDP, datapath.SCTP} {
		e.want(t, datapath.Egress, egress4("10.2.0.5:53", p), tcActUnspec, "any protocol, port 53: "+p.String())
	}
	e.want(t, datapath.Egress, egress4("10.2.0.5:53", 1), tcActShot, "ICMP with an any-protocol port rule")
	dptest.NoErr(t, m.UpsertPolicy(allow(progPeerA, datapath.Egress, datapath.UDP, 0, 0)))
	e.want(t, datapath.Egress, egress4("10.2.0.5:9999", datapath.UDP), tcActUnspec, "UDP any port")
	e.want(t, datapath.Egress, egress4("10.2.0.5:9999", datapath.TCP), tcActShot, "TCP 9999 with datapath.UDP any port")
	dptest.NoErr(t, m.UpsertPolicy(allow(progPeerA, datapath.Egress, AnyProtocol, 0, 0)))
	e.want(t, datapath.Egress, egress4("10.2.0.5:9999", datapath.TCP), tcActUnspec, "L3 rule: TCP")
	e.want(t, datapath.Egress, egress4("10.2.0.5:0", 1), tcActUnspec, "L3 rule: ICMP")
	// Another peer has none of it.
	e.want(t, datapath.Egress, egress4("10.3.0.1:8000", datapath.TCP), tcActShot, "other peer")
}

func TestPolicyProgramAnyPeerAndRefcounts(t *testing.T) {
	e := newProgEnv(t)
	m := e.m
	dptest.NoErr(t, m.SetStrict(true))
	anyPeer := allow(AnyPeer, datapath.Ingress, datapath.TCP, 443, 0)
	dptest.NoErr(t, m.UpsertPolicy(anyPeer))
	for _, src := range []string{"10.2.0.5:1000", "10.3.1.1:1000", "198.51.100.7:1000"} {
		e.want(t, datapath.Ingress, ingress4(src, 443, datapath.TCP), tcActUnspec, "any peer from "+src)
	}
	e.want(t, datapath.Ingress, ingress4("10.2.0.5:1000", 444, datapath.TCP), tcActShot, "any peer, other port")
	dptest.NoErr(t, m.DeletePolicy(anyPeer))
	e.want(t, datapath.Ingress, ingress4("10.2.0.5:1000", 443, datapath.TCP), tcActShot, "any peer removed")

	// Two keys share the block 64-127 of their ranges: removing one keeps
	// the other's ports.
	a, b := allow(progPeerA, datapath.Ingress, datapath.TCP, 64, 127), allow(progPeerA, datapath.Ingress, datapath.TCP, 64, 200)
	dptest.NoErr(t, m.ApplyPolicy([]Change{{Key: a, Add: true}, {Key: b, Add: true}}))
	dptest.NoErr(t, m.DeletePolicy(b))
	e.want(t, datapath.Ingress, ingress4("10.2.0.5:1000", 100, datapath.TCP), tcActUnspec, "shared block kept")
	e.want(t, datapath.Ingress, ingress4("10.2.0.5:1000", 150, datapath.TCP), tcActShot, "block of the removed key")
	// An any-protocol port and an explicit TCP key on it share an entry.
	c, d := allow(progPeerA, datapath.Ingress, AnyProtocol, 22, 0), allow(progPeerA, datapath.Ingress, datapath.TCP, 22, 22)
	dptest.NoErr(t, m.ApplyPolicy([]Change{{Key: c, Add: true}, {Key: d, Add: true}, {Key: c}}))
	e.want(t, datapath.Ingress, ingress4("10.2.0.5:1000", 22, datapath.TCP), tcActUnspec, "TCP 22 kept")
	e.want(t, datapath.Ingress, ingress4("10.2.0.5:1000", 22, datapath.UDP), tcActShot, "UDP 22 gone")
	// Left: the block 64-127 and TCP 22.
	if raw := rawPolicy(t, m); len(raw) != 2 {
		t.Fatalf("policy entries %v, want 2", raw)
	}
}

// rawPolicy dumps cm_policy.
func rawPolicy(t testing.TB, p *Programs) map[policyKey]struct{} {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[policyKey]struct{}{}
	dptest.NoErr(t, bpfmap.Dump(p.policy, func(k *policyKey, _ *policyValue) { out[*k] = struct{}{} }))
	return out
}

func TestPolicyProgramConntrack(t *testing.T) {
	e := newProgEnv(t)
	m := e.m
	key := allow(progPeerA, datapath.Ingress, datapath.TCP, 8080, 0)
	dptest.NoErr(t, m.UpsertPolicy(key))
	syn := ingress4("10.2.0.5:5555", 8080, datapath.TCP)
	reply := testPacket(ap(progEPAddr4+":8080"), ap("10.2.0.5:5555"), datapath.TCP, 0x12)
	e.want(t, datapath.Ingress, syn, tcActUnspec, "allowed SYN")
	// Egress is enforced and allows nothing, but this is a reply.
	e.want(t, datapath.Egress, reply, tcActUnspec, "reply")
	// The same ports the other way round without a flow: denied.
	e.want(t, datapath.Egress, testPacket(ap(progEPAddr4+":8080"), ap("10.2.0.5:5556"), datapath.TCP, 0x12), tcActShot, "unsolicited")
	e.flow(t)
	// Cached verdict, then revoked: the next packet of the flow is checked.
	e.want(t, datapath.Ingress, syn, tcActUnspec, "established")
	dptest.NoErr(t, m.DeletePolicy(key))
	e.want(t, datapath.Ingress, syn, tcActShot, "revoked")
	if f := e.flow(t); f.DropReason != flows.DropPolicyDenied || f.Src != ap("10.2.0.5:5555") {
		t.Fatalf("revocation drop %+v", f)
	}
	dptest.NoErr(t, m.UpsertPolicy(key))
	e.want(t, datapath.Ingress, syn, tcActUnspec, "allowed again")
	// A changed endpoint (identity) makes cached verdicts stale.
	setTestEndpoint(t, m, 1, progEP+1, true, true)
	dptest.NoErr(t, m.RecheckFlows())
	e.want(t, datapath.Ingress, syn, tcActShot, "other identity")
	e.flow(t)
	setTestEndpoint(t, m, 1, progEP, true, true)

	// A direction not enforced allows everything, and its flows' replies
	// pass the enforced one.
	setTestEndpoint(t, m, 1, progEP, true, false)
	e.want(t, datapath.Egress, egress4("10.3.3.3:443", datapath.TCP), tcActUnspec, "egress not enforced")
	e.want(t, datapath.Ingress, testPacket(ap("10.3.3.3:443"), ap(progEPAddr4+":40000"), datapath.TCP, 0x12), tcActUnspec, "its reply")
	e.want(t, datapath.Ingress, testPacket(ap("10.3.3.3:443"), ap(progEPAddr4+":40001"), datapath.TCP, 0x12), tcActShot, "no flow")
	e.flow(t)
	e.noFlow(t)
	c, err := m.Counters()
	dptest.NoErr(t, err)
	if c.FlowsCreated != 2 {
		t.Errorf("%d flows created, want 2 (8080 and 443)", c.FlowsCreated)
	}
}

func TestPolicyProgramSampling(t *testing.T) {
	e := newProgEnv(t)
	m := e.m
	dptest.NoErr(t, m.UpsertPolicy(allow(progPeerA, datapath.Egress, datapath.UDP, 0, 0)))
	dptest.NoErr(t, m.SetFlowConfig(flows.Config{SampleRate: 4, ClusterID: 1, TraceNew: true}))
	if fc, err := m.FlowConfig(); err != nil || fc != (flows.Config{SampleRate: 4, ClusterID: 1, TraceNew: true}) {
		t.Fatalf("FlowConfig() = %+v, %v", fc, err)
	}
	pkt := egress4("10.2.0.5:53", datapath.UDP)
	// BPF_PROG_TEST_RUN runs on one CPU at a time, but not always the same:
	// run them pinned to CPU 0 through Repeat.
	_, err := e.progs.FromEp.Run(&ebpf.RunOptions{Data: pkt, Repeat: 40})
	dptest.NoErr(t, err)
	var sampled, fresh int
	for e.fr.Pending() > 0 {
		f := e.flow(t)
		if f.Verdict != flows.VerdictForwarded || f.DstIdentity != progPeerA || f.SampleRate != 4 {
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
	dptest.NoErr(t, m.SetStrict(true))
	dptest.NoErr(t, m.UpsertPolicy(allow(progPeerA, datapath.Egress, datapath.TCP, 80, 0)))

	// IPv4 with options: the slow path.
	opts := mutate(egress4("10.2.0.5:80", datapath.TCP), func(b []byte) []byte {
		out := append(append(append([]byte{}, b[:34]...), 1, 1, 1, 0), b[34:]...) // 4 bytes of NOPs + EOL
		out[14] = 0x46
		binary.BigEndian.PutUint16(out[16:], uint16(len(out)-14))
		return out
	})
	e.want(t, datapath.Egress, opts, tcActUnspec, "IPv4 options, port 80")
	opts81 := append([]byte(nil), opts...)
	binary.BigEndian.PutUint16(opts81[14+24+2:], 81)
	e.want(t, datapath.Egress, opts81, tcActShot, "IPv4 options, port 81")
	if f := e.flow(t); f.Dst != ap("10.2.0.5:81") {
		t.Fatalf("options drop %+v", f)
	}

	// A non-first fragment has no ports: only any-port entries allow it.
	frag := mutate(egress4("10.2.0.5:80", datapath.TCP), func(b []byte) []byte {
		binary.BigEndian.PutUint16(b[20:], 185) // offset 1480
		return b
	})
	e.want(t, datapath.Egress, frag, tcActShot, "fragment")
	if f := e.flow(t); !f.Fragment || f.Dst.Port() != 0 {
		t.Fatalf("fragment drop %+v", f)
	}
	// A first fragment has them.
	first := mutate(egress4("10.2.0.5:80", datapath.TCP), func(b []byte) []byte {
		binary.BigEndian.PutUint16(b[20:], 0x2000) // MF
		return b
	})
	e.want(t, datapath.Egress, first, tcActUnspec, "first fragment")

	// A truncated TCP header in an enforced direction: invalid.
	short := egress4("10.2.0.5:80", datapath.TCP)[:14+20+8]
	e.want(t, datapath.Egress, short, tcActShot, "truncated")
	if f := e.flow(t); f.DropReason != flows.DropInvalidPacket || f.Verdict != flows.VerdictDropped {
		t.Fatalf("truncated drop %+v", f)
	}

	// IPv6, straight and behind a hop-by-hop header.
	dptest.NoErr(t, m.UpsertPolicy(allow(progPeerA, datapath.Egress, datapath.TCP, 443, 0)))
	v6 := testPacket(ap("[fd00:1::1]:40000"), ap("[fd00:2::5]:443"), datapath.TCP, 0x02)
	e.want(t, datapath.Egress, v6, tcActUnspec, "IPv6 443")
	hbh := mutate(v6, func(b []byte) []byte {
		out := append(append(append([]byte{}, b[:54]...), byte(datapath.TCP), 0, 1, 4, 0, 0, 0, 0), b[54:]...) // PadN
		out[20] = 0                                                                                            // next header: hop-by-hop
		binary.BigEndian.PutUint16(out[18:], uint16(len(out)-54))
		return out
	})
	e.want(t, datapath.Egress, hbh, tcActUnspec, "IPv6 hop-by-hop, 443")
	v6deny := testPacket(ap("[fd00:1::1]:40000"), ap("[fd00:2::5]:444"), datapath.TCP, 0x02)
	e.want(t, datapath.Egress, v6deny, tcActShot, "IPv6 444")
	if f := e.flow(t); f.Dst != ap("[fd00:2::5]:444") || f.DstIdentity != progPeerA || f.DstCluster != 2 {
		t.Fatalf("IPv6 drop %+v", f)
	}

	// Neighbour discovery and ARP pass whatever the policy.
	ns := testPacket(ap("[fe80::1]:0"), ap("[ff02::1:ff00:5]:0"), 58, 0)
	ns[54] = 135
	e.want(t, datapath.Ingress, ns, tcActUnspec, "neighbour solicitation")
	arp := make([]byte, 42)
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	e.want(t, datapath.Ingress, arp, tcActUnspec, "ARP")
	// Other ICMPv6 is policy's.
	echo := testPacket(ap("[fd00:2::5]:0"), ap("[fd00:1::1]:0"), 58, 0)
	echo[54] = 128
	e.want(t, datapath.Ingress, echo, tcActShot, "ICMPv6 echo")
	e.flow(t)
	e.noFlow(t)
}

func TestPolicyProgramUnknownInterface(t *testing.T) {
	e := newProgEnv(t)
	one := uint32(1)
	e.m.mu.Lock()
	err := e.m.endpoints.Delete(&one)
	e.m.mu.Unlock()
	dptest.NoErr(t, err)
	e.want(t, datapath.Egress, egress4("10.2.0.5:81", datapath.TCP), tcActUnspec, "no endpoint recorded")
	e.noFlow(t)
}

func TestPolicyLayout(t *testing.T) {
	spec, err := loadPolicy()
	dptest.NoErr(t, err)
	for _, c := range []struct {
		name       string
		typ        ebpf.MapType
		key, value uint32
	}{
		{PolicyMapName, ebpf.LPMTrie, policyKeySize, policyValueSize},
		{EndpointsMapName, ebpf.Hash, 4, policyEndpointSize},
		{ConfigMapName, ebpf.Array, 4, policyConfigSize},
		{CTMapName, ebpf.LRUHash, ctKeySize, ctValueSize},
		{MetricsMapName, ebpf.PerCPUArray, 4, 8},
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
	if sm := spec.Maps[MetricsMapName]; sm != nil && sm.MaxEntries != metricsSlots {
		t.Errorf("%s has %d counters, want %d", MetricsMapName, sm.MaxEntries, metricsSlots)
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

	// The ipcache the programs read, as package datapath makes it.
	h, err := dptest.OpenMaps(t, dptest.SmallConfig(""), RemovePins).Handles()
	dptest.NoErr(t, err)
	defer h.Close()
	if sm, live := spec.Maps[datapath.IPCacheMapName], h.IPCache; sm == nil {
		t.Errorf("the programs define no map %s", datapath.IPCacheMapName)
	} else if sm.Type != live.Type() || sm.KeySize != live.KeySize() || sm.ValueSize != live.ValueSize() || sm.Flags != live.Flags() {
		t.Errorf("map %s: %v, key %d, value %d bytes, flags %d; the live map: %v, %d, %d, %d",
			datapath.IPCacheMapName, sm.Type, sm.KeySize, sm.ValueSize, sm.Flags, live.Type(), live.KeySize(), live.ValueSize(), live.Flags())
	}
}
