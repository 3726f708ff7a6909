package observe

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"

	"github.com/clustermesh/clustermesh/flowl4"
)

// WriteCompact writes one GetFlows event the way `hubble observe -o
// compact` does, with the cluster before each end.
func WriteCompact(w io.Writer, r *observerpb.GetFlowsResponse) error {
	var line string
	switch {
	case r.GetFlow() != nil:
		line = Compact(r.GetFlow())
	case r.GetLostEvents() != nil:
		line = compactLost(r.GetLostEvents())
	case r.GetNodeStatus() != nil:
		ns := r.GetNodeStatus()
		line = fmt.Sprintf("NODE STATUS: %s %s %s", ns.GetStateChange(), strings.Join(ns.GetNodeNames(), ", "), ns.GetMessage())
		if ns.GetStateChange() == relaypb.NodeState_NODE_CONNECTED {
			return nil
		}
	default:
		return nil
	}
	_, err := io.WriteString(w, line+"\n")
	return err
}

func compactLost(l *flowpb.LostEvent) string {
	why := "the datapath's ring buffer was full"
	switch l.GetSource() {
	case flowpb.LostEventSource_OBSERVER_EVENTS_QUEUE:
		why = "this client read too slowly"
	case flowpb.LostEventSource_HUBBLE_RING_BUFFER:
		why = "the agent's flow ring wrapped"
	}
	return fmt.Sprintf("EVENTS LOST: %d (%s)", l.GetNumEventsLost(), why)
}

// Compact is the flow on one line, as Hubble prints it:
// "Nov 21 03:00:00.123: SRC (ID:n) -> DST (ID:m) to-endpoint FORWARDED (TCP Flags: SYN)",
// an end being cluster/namespace/pod:port, or cluster/ip:port without a
// pod; a reply is printed "DST <- SRC".
func Compact(f *flowpb.Flow) string {
	src := compactEndpoint(f.GetSource(), f.GetIP().GetSource(), sourcePort(f))
	dst := compactEndpoint(f.GetDestination(), f.GetIP().GetDestination(), destinationPort(f))
	arrow := "->"
	if f.GetIsReply().GetValue() {
		src, dst, arrow = dst, src, "<-"
	}
	what := eventText(f)
	if what != "" {
		what += " "
	}
	text := summary(f)
	if f.GetL7() != nil {
		text = compactL7(f)
	}
	return fmt.Sprintf("%s: %s %s %s %s%s (%s)", f.GetTime().AsTime().Local().Format(time.StampMilli),
		src, arrow, dst, what, f.GetVerdict(), text)
}

// eventText says what kind of event it is, as Hubble's compact output.
func eventText(f *flowpb.Flow) string {
	if l7 := f.GetL7(); l7 != nil {
		return l7Type(l7)
	}
	switch f.GetEventType().GetType() {
	case eventDrop:
		return dropText(f.GetDropReasonDesc())
	case eventPolicyVerdict:
		return "policy-verdict:" + MatchTypeName(f.GetPolicyMatchType()) + " " + f.GetTrafficDirection().String() + " " + policyAction(f.GetVerdict())
	case eventTraceSock:
		return strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(f.GetSockXlatePoint().String(), "SOCK_XLATE_POINT_"), "_", "-"))
	}
	if p := f.GetTraceObservationPoint(); p != flowpb.TraceObservationPoint_UNKNOWN_POINT {
		return strings.ToLower(strings.ReplaceAll(p.String(), "_", "-"))
	}
	return ""
}

// l7Type is Hubble's type of an L7 flow: "http-request", "http-response",
// "dns-request proxy", "dns-response proxy".
func l7Type(l7 *flowpb.Layer7) string {
	proto, typ := "l7", strings.ToLower(l7.GetType().String())
	switch {
	case l7.GetHttp() != nil:
		proto = "http"
	case l7.GetDns() != nil:
		proto = "dns"
		typ += " " + l7.GetDns().GetObservationSource()
	}
	return proto + "-" + typ
}

// compactL7 is the text of an L7 flow in compact output: Hubble's summary,
// with an HTTP response's latency to the 10 µs ("HTTP/1.1 200 took 4.91ms
// (GET http://shop/v1/cart)").
func compactL7(f *flowpb.Flow) string {
	l7 := f.GetL7()
	h := l7.GetHttp()
	if h == nil || l7.GetType() != flowpb.L7FlowType_RESPONSE {
		return l7Summary(f)
	}
	took := time.Duration(l7.GetLatencyNs()).Round(10 * time.Microsecond)
	return fmt.Sprintf("%s %d took %s (%s %s)", h.GetProtocol(), h.GetCode(), took, h.GetMethod(), h.GetUrl())
}

func dropText(r flowpb.DropReason) string {
	switch r {
	case flowpb.DropReason_POLICY_DENIED:
		return "Policy denied"
	case flowpb.DropReason_INVALID_PACKET_DROPPED:
		return "Invalid packet"
	}
	return r.String()
}

func policyAction(v flowpb.Verdict) string {
	switch v {
	case flowpb.Verdict_FORWARDED:
		return "ALLOWED"
	case flowpb.Verdict_DROPPED:
		return "DENIED"
	case flowpb.Verdict_AUDIT:
		return "AUDITED"
	}
	return v.String()
}

// MatchTypeName names a policy_match_type as Hubble does (L3-Only,
// L3-L4, L4-Only, all, none, ...).
func MatchTypeName(t uint32) string {
	switch t {
	case 0:
		return "none"
	case 1:
		return "L3-Only"
	case 2:
		return "L3-L4"
	case 3:
		return "L4-Only"
	case 4:
		return "all"
	case 5:
		return "L3-Proto"
	case 6:
		return "Proto-Only"
	}
	return "match-type(" + strconv.FormatUint(uint64(t), 10) + ")"
}

// sourcePort and destinationPort are a flow's ports, 0 without.
func sourcePort(f *flowpb.Flow) uint32 {
	src, _, _ := flowl4.Of(f.GetL4())
	return src
}

func destinationPort(f *flowpb.Flow) uint32 {
	_, dst, _ := flowl4.Of(f.GetL4())
	return dst
}

// compactEndpoint is [cluster/]namespace/pod:port, or [cluster/]ip:port
// without a pod, then its identity: (ID:n), or (world) and the like for a
// reserved one.
func compactEndpoint(e *flowpb.Endpoint, ip string, port uint32) string {
	var b strings.Builder
	if e.GetClusterName() != "" {
		b.WriteString(e.GetClusterName() + "/")
	}
	if e.GetPodName() != "" {
		if e.GetNamespace() != "" {
			b.WriteString(e.GetNamespace() + "/")
		}
		b.WriteString(e.GetPodName())
	} else if strings.Contains(ip, ":") && port != 0 {
		b.WriteString("[" + ip + "]")
	} else if ip == "" {
		b.WriteString("-") // unknown: a socket translation of an unbound socket
	} else {
		b.WriteString(ip)
	}
	if port != 0 {
		b.WriteString(":" + strconv.FormatUint(uint64(port), 10))
	}
	switch id := e.GetIdentity(); {
	case id == 0: // not known to the event (a socket translation)
	case reservedNames[id] != "":
		b.WriteString(" (" + reservedNames[id] + ")")
	default:
		b.WriteString(" (ID:" + strconv.FormatUint(uint64(id), 10) + ")")
	}
	return b.String()
}
