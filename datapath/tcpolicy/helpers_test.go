package tcpolicy

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/internal/dptest"
)

// Helpers of the policy tests: packets for BPF_PROG_TEST_RUN, programs
// loaded against test maps, direct writes of the endpoint map.

// openTest opens small mesh maps in a fresh pin directory and the
// programs' maps sized by cfg beside them (zero: small sizes); both are
// closed, and every pin removed, when the test ends. It needs root.
func openTest(t testing.TB, cfg Config) (*datapath.Maps, *Programs) {
	t.Helper()
	mesh := dptest.OpenMaps(t, dptest.SmallConfig(""), RemovePins)
	return mesh, openPrograms(t, mesh, cfg)
}

// openPrograms opens the programs' maps beside mesh's, sized by cfg (zero:
// small sizes), closed when the test ends.
func openPrograms(t testing.TB, mesh *datapath.Maps, cfg Config) *Programs {
	t.Helper()
	if cfg == (Config{}) {
		cfg = Config{MaxPolicy: 1 << 12, MaxPolicyCT: 1 << 10, FlowRingBytes: 1 << 14}
	}
	p, err := Open(mesh, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// testPolicyProgs are every program of bpf/policy.c, the empty baseline
// included.
type testPolicyProgs struct {
	FromEp *ebpf.Program `ebpf:"cm_policy_from_ep"`
	ToEp   *ebpf.Program `ebpf:"cm_policy_to_ep"`
	Empty  *ebpf.Program `ebpf:"cm_policy_empty"`
}

// loadTestPolicyProgs loads the programs against p's maps (closed at
// cleanup); nothing is attached.
func loadTestPolicyProgs(t testing.TB, p *Programs) *testPolicyProgs {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	var pr testPolicyProgs
	dptest.NoErr(t, p.loadInto(&pr))
	t.Cleanup(func() { pr.FromEp.Close(); pr.ToEp.Close(); pr.Empty.Close() })
	return &pr
}

// setTestEndpoint records an endpoint for ifindex without attaching
// anything (BPF_PROG_TEST_RUN runs on the loopback, ifindex 1).
func setTestEndpoint(t testing.TB, p *Programs, ifindex uint32, identity uint32, ingress, egress bool) {
	t.Helper()
	recordTestEndpoint(t, p, ifindex, Endpoint{Identity: identity, EnforceIngress: ingress, EnforceEgress: egress})
}

// recordTestEndpoint records ep for ifindex without attaching anything.
func recordTestEndpoint(t testing.TB, p *Programs, ifindex uint32, ep Endpoint) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	v := ep.value()
	dptest.NoErr(t, p.endpoints.Update(&ifindex, &v, ebpf.UpdateAny))
}

// anyPeerFlag reads whether p holds CFG_HAS_ANY_PEER.
func anyPeerFlag(p *Programs) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conf.Flags&cfgHasAnyPeer != 0
}

// forceClsact makes p attach with clsact filters (or with TCX again) for
// the rest of the test, which restores the previous mode.
func forceClsact(t testing.TB, p *Programs, on bool) {
	was := p.setClsactOnly(on)
	t.Cleanup(func() { p.setClsactOnly(was) })
}

// testPacket builds an Ethernet frame carrying an IPv4 or IPv6 packet of
// proto (TCP with tcpFlags, UDP, or anything else with 8 bytes of payload).
func testPacket(src, dst netip.AddrPort, proto datapath.Protocol, tcpFlags uint8) []byte {
	var l4 []byte
	switch proto {
	case datapath.TCP:
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:], src.Port())
		binary.BigEndian.PutUint16(l4[2:], dst.Port())
		l4[12] = 5 << 4
		l4[13] = tcpFlags
	case datapath.UDP, datapath.SCTP:
		l4 = make([]byte, 8+8)
		binary.BigEndian.PutUint16(l4[0:], src.Port())
		binary.BigEndian.PutUint16(l4[2:], dst.Port())
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	default:
		l4 = make([]byte, 8)
	}
	eth := make([]byte, 14)
	eth[0], eth[6] = 0x02, 0x02
	if src.Addr().Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		ip[8] = 64
		ip[9] = uint8(proto)
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		return append(append(eth, ip...), l4...)
	}
	binary.BigEndian.PutUint16(eth[12:], 0x86dd)
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
	ip[6] = uint8(proto)
	ip[7] = 64
	s, d := src.Addr().As16(), dst.Addr().As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(append(eth, ip...), l4...)
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
