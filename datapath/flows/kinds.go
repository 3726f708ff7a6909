package flows

import (
	"fmt"
	"strings"
)

// Kind is what an event reports. The values are Cilium's monitor message
// types, which Hubble reports as a flow's event_type.type.
type Kind uint8

// Kinds.
const (
	// KindDrop: a dropped packet (Hubble event type 1, DROP).
	KindDrop Kind = 1
	// KindTrace: a forwarded (or audited) packet (4, TRACE).
	KindTrace Kind = 4
	// KindPolicyVerdict: the policy decision on a packet of an enforced
	// direction: the first packet of a connection, allowed or audited,
	// or a denied packet (5, POLICY_VERDICT; Hubble's flow type L3_L4).
	// Reported when Config.PolicyVerdicts is set, with Flow.MatchType.
	KindPolicyVerdict Kind = 5
	// KindSockTranslate: the socket load balancer (package
	// datapath/socklb) sent a socket that connects or sends to a service
	// frontend to one of its backends (7, TRACE_SOCK; Hubble's flow type
	// SOCK, verdict TRANSLATED).
	KindSockTranslate Kind = 7
)

func (k Kind) String() string {
	switch k {
	case KindDrop:
		return "drop"
	case KindTrace:
		return "trace"
	case KindPolicyVerdict:
		return "policy-verdict"
	case KindSockTranslate:
		return "trace-sock"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// MatchType is which kind of policy entry allowed a flow, in a
// policy-verdict event: Cilium's PolicyMatchType values (pkg/monitor/api,
// bpf/lib/policy.h POLICY_MATCH_*), which Hubble reports as
// policy_match_type. A key of package tcpolicy for one peer is L3-only
// without protocol, L3-proto with a protocol and no port, L3-L4 with a
// port; for any peer (tcpolicy.AnyPeer) all, proto-only and L4-only.
type MatchType uint8

// Match types.
const (
	MatchNone      MatchType = 0 // denied, or audited
	MatchL3Only    MatchType = 1
	MatchL3L4      MatchType = 2
	MatchL4Only    MatchType = 3
	MatchAll       MatchType = 4
	MatchL3Proto   MatchType = 5
	MatchProtoOnly MatchType = 6
)

// String is Cilium's name of the match type.
func (m MatchType) String() string {
	switch m {
	case MatchNone:
		return "none"
	case MatchL3Only:
		return "L3-Only"
	case MatchL3L4:
		return "L3-L4"
	case MatchL4Only:
		return "L4-Only"
	case MatchAll:
		return "all"
	case MatchL3Proto:
		return "L3-Proto"
	case MatchProtoOnly:
		return "Proto-Only"
	}
	return "unknown"
}

// TCPFlags are the flags of a TCP packet's header (byte 13), 0 for other
// protocols and for fragments without the header.
type TCPFlags uint8

// The bits of TCPFlags.
const (
	TCPFlagFIN TCPFlags = 1 << iota
	TCPFlagSYN
	TCPFlagRST
	TCPFlagPSH
	TCPFlagACK
	TCPFlagURG
	TCPFlagECE
	TCPFlagCWR
)

func (f TCPFlags) FIN() bool { return f&TCPFlagFIN != 0 }
func (f TCPFlags) SYN() bool { return f&TCPFlagSYN != 0 }
func (f TCPFlags) RST() bool { return f&TCPFlagRST != 0 }
func (f TCPFlags) PSH() bool { return f&TCPFlagPSH != 0 }
func (f TCPFlags) ACK() bool { return f&TCPFlagACK != 0 }
func (f TCPFlags) URG() bool { return f&TCPFlagURG != 0 }
func (f TCPFlags) ECE() bool { return f&TCPFlagECE != 0 }
func (f TCPFlags) CWR() bool { return f&TCPFlagCWR != 0 }

// tcpFlagOrder is the order of Hubble's summary (pkg/hubble/parser/threefour).
var tcpFlagOrder = [...]struct {
	bit  TCPFlags
	name string
}{
	{TCPFlagSYN, "SYN"}, {TCPFlagACK, "ACK"}, {TCPFlagRST, "RST"}, {TCPFlagFIN, "FIN"},
	{TCPFlagPSH, "PSH"}, {TCPFlagURG, "URG"}, {TCPFlagECE, "ECE"}, {TCPFlagCWR, "CWR"},
}

// String lists the flags set as Hubble's summary does ("SYN, ACK"), in its
// order: SYN, ACK, RST, FIN, PSH, URG, ECE, CWR; "" for none.
func (f TCPFlags) String() string {
	var b strings.Builder
	for _, o := range tcpFlagOrder {
		if f&o.bit == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		b.WriteString(o.name)
	}
	return b.String()
}

// XlatePoint is where a socket translation was observed: Hubble's
// SocketTranslationPoint (sock_xlate_point).
type XlatePoint uint8

// Translation points. The socket load balancer reports the forward
// translation once done (the destination is the backend).
const (
	XlateUnknown     XlatePoint = 0
	XlatePostForward XlatePoint = 2 // SOCK_XLATE_POINT_POST_DIRECTION_FWD
)
