package datapath

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// Helpers of the policy tests: packets for BPF_PROG_TEST_RUN, programs
// loaded against test maps, direct writes of the endpoint map.

// testPolicyProgs are every program of bpf/policy.c, the empty baseline
// included.
type testPolicyProgs struct {
	FromEp *ebpf.Program `ebpf:"cm_policy_from_ep"`
	ToEp   *ebpf.Program `ebpf:"cm_policy_to_ep"`
	Empty  *ebpf.Program `ebpf:"cm_policy_empty"`
}

// loadTestPolicyProgs loads the programs against m's maps (closed at
// cleanup); nothing is attached.
func loadTestPolicyProgs(t testing.TB, m *Maps) *testPolicyProgs {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := m.policyLocked("test")
	mustNoErr(t, err)
	var p testPolicyProgs
	mustNoErr(t, m.loadPolicyInto(ps, &p))
	t.Cleanup(func() { p.FromEp.Close(); p.ToEp.Close(); p.Empty.Close() })
	return &p
}

// setTestEndpoint records an endpoint for ifindex without attaching
// anything (BPF_PROG_TEST_RUN runs on the loopback, ifindex 1).
func setTestEndpoint(t testing.TB, m *Maps, ifindex uint32, identity uint32, ingress, egress bool) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := m.policyLocked("test")
	mustNoErr(t, err)
	ep := policyEndpoint{Identity: identity}
	if ingress {
		ep.Flags |= epEnforceIngress
	}
	if egress {
		ep.Flags |= epEnforceEgress
	}
	mustNoErr(t, ps.endpoints.Update(&ifindex, &ep, ebpf.UpdateAny))
}

// testPacket builds an Ethernet frame carrying an IPv4 or IPv6 packet of
// proto (TCP with tcpFlags, UDP, or anything else with 8 bytes of payload).
func testPacket(src, dst netip.AddrPort, proto Protocol, tcpFlags uint8) []byte {
	var l4 []byte
	switch proto {
	case TCP:
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:], src.Port())
		binary.BigEndian.PutUint16(l4[2:], dst.Port())
		l4[12] = 5 << 4
		l4[13] = tcpFlags
	case UDP, SCTP:
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
