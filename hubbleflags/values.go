package hubbleflags

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// EventTypes are Hubble's event type names (--type NAME[:SUBTYPE]) and
// their numbers (Cilium's monitor message types).
var EventTypes = map[string]int32{
	"drop":           1,
	"debug":          2,
	"capture":        3,
	"trace":          4,
	"policy-verdict": 5,
	"trace-sock":     7,
	"l7":             129,
	"agent":          130,
}

// TraceObservationPoints are the sub-types of --type trace: where the
// datapath saw the packet (Cilium's trace observation points).
var TraceObservationPoints = map[string]int32{
	"to-endpoint":   0,
	"to-proxy":      1,
	"to-host":       2,
	"to-stack":      3,
	"to-overlay":    4,
	"from-endpoint": 5,
	"from-proxy":    6,
	"from-host":     7,
	"from-stack":    8,
	"from-overlay":  9,
	"from-network":  10,
	"to-network":    11,
	"from-crypto":   12,
	"to-crypto":     13,
}

// agentEventSubtypes are the sub-types of --type agent (Cilium's agent
// notifications).
var agentEventSubtypes = map[string]int32{
	"unspecified":                 0,
	"message":                     1,
	"agent-started":               2,
	"endpoint-regenerate-success": 3,
	"endpoint-regenerate-failure": 4,
	"policy-updated":              5,
	"policy-deleted":              6,
	"endpoint-created":            7,
	"endpoint-deleted":            8,
	"ipcache-upserted":            9,
	"ipcache-deleted":             10,
}

// ReservedIdentities are the names --identity takes for Cilium's reserved
// security identities, in the order of their numbers (1 to 14).
var ReservedIdentities = []string{
	"host", "world", "unmanaged", "health", "init", "remote-node", "kube-apiserver", "ingress",
	"world-ipv4", "world-ipv6", "aggregate-cluster", "aggregate-cluster-mesh", "aggregate-world", "aggregate-remote-node",
}

// ParseEventType parses --type's TYPE[:SUBTYPE]: a type name or number, and
// a sub-type name (of trace and agent, when the type is named) or number.
func ParseEventType(s string) (*flowpb.EventTypeFilter, error) {
	name, sub, hasSub := strings.Cut(s, ":")
	tf := &flowpb.EventTypeFilter{}
	t, named := EventTypes[name]
	if named {
		tf.Type = t
	} else {
		n, err := strconv.ParseUint(name, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("unknown event type %q: want a number or one of %s", name, strings.Join(sortedKeys(EventTypes), ", "))
		}
		tf.Type = int32(n)
	}
	if !hasSub {
		return tf, nil
	}
	tf.MatchSubType = true
	names := map[int32]map[string]int32{4: TraceObservationPoints, 130: agentEventSubtypes}[t]
	if st, ok := names[sub]; ok && named {
		tf.SubType = st
		return tf, nil
	}
	n, err := strconv.ParseUint(sub, 10, 32)
	if err != nil {
		if len(names) > 0 && named {
			return nil, fmt.Errorf("unknown sub-type %q of event type %s: want a number or one of %s", sub, name, strings.Join(sortedKeys(names), ", "))
		}
		return nil, fmt.Errorf("unknown sub-type %q of event type %s: want a number", sub, name)
	}
	tf.SubType = int32(n)
	return tf, nil
}

// sortedKeys are the names of m in the order of their numbers.
func sortedKeys(m map[string]int32) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return int(m[a]) - int(m[b]) })
	return keys
}

// ParseIdentity parses a security identity: a reserved name (host, world,
// ...) or a number (decimal, 0x hexadecimal or 0 octal, as Cilium parses
// it) up to 2^32-1.
func ParseIdentity(s string) (uint32, error) {
	if i := slices.Index(ReservedIdentities, s); i >= 0 {
		return uint32(i + 1), nil
	}
	n, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid security identity, expected one of %v or a numeric value", ReservedIdentities)
	}
	return uint32(n), nil
}

// ParseWorkload parses [KIND/]NAME: "Deployment/checkout", "checkout"
// (any kind), "Deployment/" (any name).
func ParseWorkload(s string) *flowpb.Workload {
	kind, name, ok := strings.Cut(s, "/")
	if !ok {
		return &flowpb.Workload{Name: s}
	}
	return &flowpb.Workload{Kind: kind, Name: name}
}

// ParseTCPFlags parses a comma-separated set of TCP flags (syn,ack: a flow
// with both), in any case.
func ParseTCPFlags(s string) (*flowpb.TCPFlags, error) {
	f := &flowpb.TCPFlags{}
	for name := range strings.SplitSeq(s, ",") {
		switch strings.ToUpper(name) {
		case "SYN":
			f.SYN = true
		case "FIN":
			f.FIN = true
		case "RST":
			f.RST = true
		case "PSH":
			f.PSH = true
		case "ACK":
			f.ACK = true
		case "URG":
			f.URG = true
		case "ECE":
			f.ECE = true
		case "CWR":
			f.CWR = true
		case "NS":
			f.NS = true
		default:
			return nil, fmt.Errorf("unknown tcp flag: %s (want SYN, FIN, RST, PSH, ACK, URG, ECE, CWR or NS, comma-separated)", name)
		}
	}
	return f, nil
}

// ParseIPVersion parses --ip-version: v4 (4, ipv4, ip4), v6 (6, ipv6,
// ip6) or none (flows without IP, such as ARP). Hubble takes any other
// value for none; this refuses it.
func ParseIPVersion(s string) (flowpb.IPVersion, error) {
	switch strings.ToLower(s) {
	case "4", "v4", "ipv4", "ip4":
		return flowpb.IPVersion_IPv4, nil
	case "6", "v6", "ipv6", "ip6":
		return flowpb.IPVersion_IPv6, nil
	case "none":
		return flowpb.IPVersion_IP_NOT_USED, nil
	}
	return 0, fmt.Errorf("invalid IP version %q: want v4, v6 or none", s)
}

// ParseVerdict parses a verdict's name, in capitals as Hubble takes it.
func ParseVerdict(s string) (flowpb.Verdict, error) {
	v, ok := flowpb.Verdict_value[s]
	if !ok {
		return 0, fmt.Errorf("invalid --verdict value: %v (want one of %s)", s, strings.Join(Verdicts, ", "))
	}
	return flowpb.Verdict(v), nil
}

// Verdicts are the verdicts --verdict offers, as Hubble lists them.
var Verdicts = []string{"FORWARDED", "DROPPED", "AUDIT", "REDIRECTED", "ERROR", "TRACED", "TRANSLATED"}

// ParseDropReason parses a drop reason's name (POLICY_DENIED, ...), in
// capitals as Hubble takes it.
func ParseDropReason(s string) (flowpb.DropReason, error) {
	if s == "" {
		return 0, errors.New("empty --drop-reason-desc value")
	}
	v, ok := flowpb.DropReason_value[s]
	if !ok {
		return 0, fmt.Errorf("invalid --drop-reason-desc value: %v (a name of Hubble's DropReason, e.g. POLICY_DENIED, STALE_OR_UNROUTABLE_IP)", s)
	}
	return flowpb.DropReason(v), nil
}

// ParseTrafficDirection parses ingress or egress, in any case.
func ParseTrafficDirection(s string) (flowpb.TrafficDirection, error) {
	switch td := strings.ToLower(s); td {
	case "ingress":
		return flowpb.TrafficDirection_INGRESS, nil
	case "egress":
		return flowpb.TrafficDirection_EGRESS, nil
	default:
		return 0, fmt.Errorf("%s: invalid traffic direction, expected ingress or egress", td)
	}
}

// parseIPTraceID parses an IP trace id: a number above 0.
func parseIPTraceID(s string) (uint64, error) {
	if s == "0" {
		return 0, errors.New("invalid --ip-trace-id value; must be greater than 0")
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid --ip-trace-id value: %w", err)
	}
	return n, nil
}

// parseHTTPHeader parses NAME:VALUE.
func parseHTTPHeader(s string) (*flowpb.HTTPHeader, error) {
	k, v, ok := strings.Cut(s, ":")
	if !ok {
		return nil, fmt.Errorf("invalid http-header value %q, expected name:value", s)
	}
	return &flowpb.HTTPHeader{Key: k, Value: v}, nil
}
