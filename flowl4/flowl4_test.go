package flowl4

import (
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

func TestOf(t *testing.T) {
	for _, tc := range []struct {
		l4       *flowpb.Layer4
		src, dst uint32
		proto    string
		ports    bool
	}{
		{&flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 41000, DestinationPort: 8080}}}, 41000, 8080, "TCP", true},
		{&flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: 5353, DestinationPort: 53}}}, 5353, 53, "UDP", true},
		{&flowpb.Layer4{Protocol: &flowpb.Layer4_SCTP{SCTP: &flowpb.SCTP{SourcePort: 1, DestinationPort: 2}}}, 1, 2, "SCTP", true},
		{&flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv4{ICMPv4: &flowpb.ICMPv4{Type: 8}}}, 0, 0, "ICMPv4", false},
		{&flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv6{ICMPv6: &flowpb.ICMPv6{}}}, 0, 0, "ICMPv6", false},
		{&flowpb.Layer4{Protocol: &flowpb.Layer4_VRRP{VRRP: &flowpb.VRRP{}}}, 0, 0, "VRRP", false},
		{&flowpb.Layer4{Protocol: &flowpb.Layer4_IGMP{IGMP: &flowpb.IGMP{}}}, 0, 0, "IGMP", false},
		{&flowpb.Layer4{}, 0, 0, "", false},
		{nil, 0, 0, "", false},
	} {
		src, dst, proto := Of(tc.l4)
		if src != tc.src || dst != tc.dst || proto != tc.proto || HasPorts(proto) != tc.ports {
			t.Errorf("Of(%v) = %d, %d, %q (ports %v); want %d, %d, %q (ports %v)",
				tc.l4, src, dst, proto, HasPorts(proto), tc.src, tc.dst, tc.proto, tc.ports)
		}
	}
}
