package flowmetrics

import (
	"strconv"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// The monitor event types a flow's event_type.type carries (Cilium's
// pkg/monitor/api/types.go).
const (
	eventDrop          = 1
	eventCapture       = 3
	eventTrace         = 4
	eventPolicyVerdict = 5
	eventAccessLog     = 129
)

// traceObservationPoints names a trace event's sub-type (Cilium's
// TraceObservationPoints).
var traceObservationPoints = [...]string{
	"to-endpoint", "to-proxy", "to-host", "to-stack", "to-overlay",
	"from-endpoint", "from-proxy", "from-host", "from-stack", "from-overlay",
	"from-network", "to-network", "from-crypto", "to-crypto",
}

// flowType returns the type and sub-type labels of hubble_flows_processed_total;
// for an unknown type the sub-type is its number, which the caller writes.
func flowType(f *flowpb.Flow) (typ, subtype string) {
	switch f.GetEventType().GetType() {
	case eventAccessLog:
		switch {
		case f.GetL7().GetDns() != nil:
			return "L7", "DNS"
		case f.GetL7().GetHttp() != nil:
			return "L7", "HTTP"
		}
		return "L7", ""
	case eventDrop:
		return "Drop", ""
	case eventCapture:
		return "Capture", ""
	case eventTrace:
		if st := uint8(f.GetEventType().GetSubType()); int(st) < len(traceObservationPoints) {
			return "Trace", traceObservationPoints[st]
		}
		return "Trace", ""
	case eventPolicyVerdict:
		return "PolicyVerdict", ""
	}
	return "Unknown", ""
}

// protocol is the flow's protocol label (Cilium's v1.FlowProtocol).
func protocol(f *flowpb.Flow) string {
	switch f.GetEventType().GetType() {
	case eventAccessLog:
		switch {
		case f.GetL7().GetDns() != nil:
			return "DNS"
		case f.GetL7().GetHttp() != nil:
			return "HTTP"
		}
		return "Unknown L7"
	case eventDrop, eventTrace, eventPolicyVerdict, eventCapture:
		return l4Protocol(f.GetL4())
	}
	return "Unknown flow"
}

func l4Protocol(l4 *flowpb.Layer4) string {
	switch {
	case l4.GetTCP() != nil:
		return "TCP"
	case l4.GetUDP() != nil:
		return "UDP"
	case l4.GetICMPv4() != nil:
		return "ICMPv4"
	case l4.GetICMPv6() != nil:
		return "ICMPv6"
	case l4.GetSCTP() != nil:
		return "SCTP"
	case l4.GetVRRP() != nil:
		return "VRRP"
	case l4.GetIGMP() != nil:
		return "IGMP"
	}
	return "Unknown L4"
}

// icmpType is an ICMP type's name and, for the types that use it, its
// codes' names (gopacket's layers.ICMPv4TypeCode and ICMPv6TypeCode, whose
// String Hubble's icmp metric uses).
type icmpType struct {
	name  string
	codes map[uint8]string
}

var icmpv4Types = map[uint8]icmpType{
	0: {name: "EchoReply"},
	3: {"DestinationUnreachable", map[uint8]string{0: "Net", 1: "Host", 2: "Protocol", 3: "Port",
		4: "FragmentationNeeded", 5: "SourceRoutingFailed", 6: "NetUnknown", 7: "HostUnknown", 8: "SourceIsolated",
		9: "NetAdminProhibited", 10: "HostAdminProhibited", 11: "NetTOS", 12: "HostTOS", 13: "CommAdminProhibited",
		14: "HostPrecedence", 15: "PrecedenceCutoff"}},
	4:  {name: "SourceQuench"},
	5:  {"Redirect", map[uint8]string{0: "Net", 1: "Host", 2: "TOS+Net", 3: "TOS+Host"}},
	8:  {name: "EchoRequest"},
	9:  {name: "RouterAdvertisement"},
	10: {name: "RouterSolicitation"},
	11: {"TimeExceeded", map[uint8]string{0: "TTLExceeded", 1: "FragmentReassemblyTimeExceeded"}},
	12: {"ParameterProblem", map[uint8]string{0: "PointerIndicatesError", 1: "MissingOption", 2: "BadLength"}},
	13: {name: "TimestampRequest"},
	14: {name: "TimestampReply"},
	15: {name: "InfoRequest"},
	16: {name: "InfoReply"},
	17: {name: "AddressMaskRequest"},
	18: {name: "AddressMaskReply"},
}

var icmpv6Types = map[uint8]icmpType{
	1: {"DestinationUnreachable", map[uint8]string{0: "NoRouteToDst", 1: "AdminProhibited", 2: "BeyondScopeOfSrc",
		3: "AddressUnreachable", 4: "PortUnreachable", 5: "SrcAddressFailedPolicy", 6: "RejectRouteToDst"}},
	2:   {name: "PacketTooBig"},
	3:   {"TimeExceeded", map[uint8]string{0: "HopLimitExceeded", 1: "FragmentReassemblyTimeExceeded"}},
	4:   {"ParameterProblem", map[uint8]string{0: "ErroneousHeaderField", 1: "UnrecognizedNextHeader", 2: "UnrecognizedIPv6Option"}},
	128: {name: "EchoRequest"},
	129: {name: "EchoReply"},
	133: {name: "RouterSolicitation"},
	134: {name: "RouterAdvertisement"},
	135: {name: "NeighborSolicitation"},
	136: {name: "NeighborAdvertisement"},
	137: {name: "Redirect"},
}

func appendICMPv4(key []byte, typ, code uint32) []byte {
	return appendICMP(key, icmpv4Types, uint8(typ), uint8(code))
}

func appendICMPv6(key []byte, typ, code uint32) []byte {
	return appendICMP(key, icmpv6Types, uint8(typ), uint8(code))
}

// appendICMP appends what gopacket's String gives: "EchoRequest",
// "DestinationUnreachable(Port)", "EchoRequest(Code: 3)", "200(1)".
func appendICMP(key []byte, types map[uint8]icmpType, typ, code uint8) []byte {
	t, ok := types[typ]
	if !ok {
		key = strconv.AppendUint(key, uint64(typ), 10)
		key = append(key, '(')
		return append(strconv.AppendUint(key, uint64(code), 10), ')')
	}
	key = append(key, t.name...)
	if t.codes == nil && code == 0 {
		return key
	}
	if c, ok := t.codes[code]; ok {
		return append(append(append(key, '('), c...), ')')
	}
	key = append(key, "(Code: "...)
	return append(strconv.AppendUint(key, uint64(code), 10), ')')
}
