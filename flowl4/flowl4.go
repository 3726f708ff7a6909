// Package flowl4 owns reading a flow's layer 4 the way Hubble's consumers
// do: its ports and its protocol's name, one switch for the printer, the
// filters, the metrics and the service map.
package flowl4

import flowpb "github.com/cilium/cilium/api/v1/flow"

// Of returns the ports and the protocol's name of a flow's layer 4: TCP,
// UDP or SCTP with their ports; ICMPv4, ICMPv6, VRRP or IGMP with none;
// "" when the flow has no layer 4 or one of another protocol.
func Of(l4 *flowpb.Layer4) (src, dst uint32, proto string) {
	switch p := l4.GetProtocol().(type) {
	case *flowpb.Layer4_TCP:
		return p.TCP.GetSourcePort(), p.TCP.GetDestinationPort(), "TCP"
	case *flowpb.Layer4_UDP:
		return p.UDP.GetSourcePort(), p.UDP.GetDestinationPort(), "UDP"
	case *flowpb.Layer4_SCTP:
		return p.SCTP.GetSourcePort(), p.SCTP.GetDestinationPort(), "SCTP"
	case *flowpb.Layer4_ICMPv4:
		return 0, 0, "ICMPv4"
	case *flowpb.Layer4_ICMPv6:
		return 0, 0, "ICMPv6"
	case *flowpb.Layer4_VRRP:
		return 0, 0, "VRRP"
	case *flowpb.Layer4_IGMP:
		return 0, 0, "IGMP"
	}
	return 0, 0, ""
}

// HasPorts reports whether proto (as Of names it) carries ports.
func HasPorts(proto string) bool { return proto == "TCP" || proto == "UDP" || proto == "SCTP" }
