package flowfilter

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/clustermesh/clustermesh/flowl4"
)

// Ranks of the fields' cost, cheapest first.
const (
	rankScalar  = iota // an enum or integer compared
	rankString         // strings compared
	rankAddress        // addresses parsed
	rankPattern        // selectors, regular expressions
)

type builder struct {
	rank  int
	build func(*flowpb.FlowFilter) (matchFunc, error)
}

// builders maps every FlowFilter field this package implements, by its
// proto name, to its compiler. A field absent here is refused.
var builders = map[string]builder{
	"uuid":                     {rankString, func(ff *flowpb.FlowFilter) (matchFunc, error) { return uuidMatch(ff.GetUuid()), nil }},
	"source_ip":                {rankAddress, ipField("source_ip", (*flowpb.FlowFilter).GetSourceIp, (*flowpb.IP).GetSource)},
	"destination_ip":           {rankAddress, ipField("destination_ip", (*flowpb.FlowFilter).GetDestinationIp, (*flowpb.IP).GetDestination)},
	"source_ip_xlated":         {rankAddress, ipField("source_ip_xlated", (*flowpb.FlowFilter).GetSourceIpXlated, (*flowpb.IP).GetSourceXlated)},
	"source_pod":               {rankString, nameField("source_pod", (*flowpb.FlowFilter).GetSourcePod, sourcePod)},
	"destination_pod":          {rankString, nameField("destination_pod", (*flowpb.FlowFilter).GetDestinationPod, destinationPod)},
	"source_service":           {rankString, nameField("source_service", (*flowpb.FlowFilter).GetSourceService, sourceService)},
	"destination_service":      {rankString, nameField("destination_service", (*flowpb.FlowFilter).GetDestinationService, destinationService)},
	"source_label":             {rankPattern, labelField("source_label", (*flowpb.FlowFilter).GetSourceLabel, sourceLabels)},
	"destination_label":        {rankPattern, labelField("destination_label", (*flowpb.FlowFilter).GetDestinationLabel, destinationLabels)},
	"node_labels":              {rankPattern, labelField("node_labels", (*flowpb.FlowFilter).GetNodeLabels, nodeLabels)},
	"source_workload":          {rankString, workloadField((*flowpb.FlowFilter).GetSourceWorkload, (*flowpb.Flow).GetSource)},
	"destination_workload":     {rankString, workloadField((*flowpb.FlowFilter).GetDestinationWorkload, (*flowpb.Flow).GetDestination)},
	"source_cluster_name":      {rankString, clusterField("source_cluster_name", (*flowpb.FlowFilter).GetSourceClusterName, (*flowpb.Flow).GetSource)},
	"destination_cluster_name": {rankString, clusterField("destination_cluster_name", (*flowpb.FlowFilter).GetDestinationClusterName, (*flowpb.Flow).GetDestination)},
	"source_identity":          {rankScalar, identityField((*flowpb.FlowFilter).GetSourceIdentity, (*flowpb.Flow).GetSource)},
	"destination_identity":     {rankScalar, identityField((*flowpb.FlowFilter).GetDestinationIdentity, (*flowpb.Flow).GetDestination)},
	"source_fqdn":              {rankPattern, fqdnField("source_fqdn", (*flowpb.FlowFilter).GetSourceFqdn, (*flowpb.Flow).GetSourceNames)},
	"destination_fqdn":         {rankPattern, fqdnField("destination_fqdn", (*flowpb.FlowFilter).GetDestinationFqdn, (*flowpb.Flow).GetDestinationNames)},
	"traffic_direction":        {rankScalar, func(ff *flowpb.FlowFilter) (matchFunc, error) { return directionMatch(ff.GetTrafficDirection()), nil }},
	"verdict":                  {rankScalar, func(ff *flowpb.FlowFilter) (matchFunc, error) { return verdictMatch(ff.GetVerdict()), nil }},
	"drop_reason_desc":         {rankScalar, func(ff *flowpb.FlowFilter) (matchFunc, error) { return dropReasonMatch(ff.GetDropReasonDesc()), nil }},
	"event_type":               {rankScalar, func(ff *flowpb.FlowFilter) (matchFunc, error) { return eventTypeMatch(ff.GetEventType()), nil }},
	"tcp_flags":                {rankScalar, func(ff *flowpb.FlowFilter) (matchFunc, error) { return tcpFlagsMatch(ff.GetTcpFlags()), nil }},
	"ip_version":               {rankScalar, func(ff *flowpb.FlowFilter) (matchFunc, error) { return ipVersionMatch(ff.GetIpVersion()), nil }},
	"reply":                    {rankScalar, func(ff *flowpb.FlowFilter) (matchFunc, error) { return replyMatch(ff.GetReply()), nil }},
	"encrypted":                {rankScalar, func(ff *flowpb.FlowFilter) (matchFunc, error) { return encryptedMatch(ff.GetEncrypted()), nil }},
	"interface":                {rankString, func(ff *flowpb.FlowFilter) (matchFunc, error) { return interfaceMatch(ff.GetInterface()), nil }},
	"trace_id":                 {rankString, func(ff *flowpb.FlowFilter) (matchFunc, error) { return traceIDMatch(ff.GetTraceId()), nil }},
	"ip_trace_id":              {rankScalar, func(ff *flowpb.FlowFilter) (matchFunc, error) { return ipTraceIDMatch(ff.GetIpTraceId()), nil }},
	"protocol":                 {rankScalar, func(ff *flowpb.FlowFilter) (matchFunc, error) { return protocolMatch(ff.GetProtocol()) }},
	"source_port":              {rankScalar, portField("source_port", (*flowpb.FlowFilter).GetSourcePort, sourcePort)},
	"destination_port":         {rankScalar, portField("destination_port", (*flowpb.FlowFilter).GetDestinationPort, destinationPort)},
	"node_name":                {rankPattern, func(ff *flowpb.FlowFilter) (matchFunc, error) { return nodeNameMatch(ff.GetNodeName()) }},
	"http_status_code":         {rankScalar, httpField("http_status_code", func(ff *flowpb.FlowFilter) (matchFunc, error) { return httpStatusMatch(ff.GetHttpStatusCode()) })},
	"http_method":              {rankString, httpField("http_method", func(ff *flowpb.FlowFilter) (matchFunc, error) { return httpMethodMatch(ff.GetHttpMethod()), nil })},
	"http_path":                {rankPattern, httpField("http_path", func(ff *flowpb.FlowFilter) (matchFunc, error) { return httpPathMatch(ff.GetHttpPath()) })},
	"http_url":                 {rankPattern, httpField("http_url", func(ff *flowpb.FlowFilter) (matchFunc, error) { return httpURLMatch(ff.GetHttpUrl()) })},
	"http_header":              {rankString, httpField("http_header", func(ff *flowpb.FlowFilter) (matchFunc, error) { return httpHeaderMatch(ff.GetHttpHeader()), nil })},
	"dns_query":                {rankPattern, func(ff *flowpb.FlowFilter) (matchFunc, error) { return dnsQueryMatch(ff.GetDnsQuery()) }},
	"experimental":             {rankPattern, experimentalField},
}

// experimentalField refuses CEL expressions, the one experimental filter,
// and accepts an empty experimental block.
func experimentalField(ff *flowpb.FlowFilter) (matchFunc, error) {
	if len(ff.GetExperimental().GetCelExpression()) > 0 {
		return nil, fmt.Errorf("%w %q", ErrUnsupportedField, "experimental.cel_expression")
	}
	if err := refuseUnknownIn(ff.GetExperimental()); err != nil {
		return nil, err
	}
	return nil, nil
}

func refuseUnknownIn(x *flowpb.FlowFilter_Experimental) error {
	if len(x.ProtoReflect().GetUnknown()) > 0 {
		return fmt.Errorf("%w: unknown field in \"experimental\"", ErrUnsupportedField)
	}
	return nil
}

func uuidMatch(ids []string) matchFunc {
	return func(f *flowpb.Flow) bool { return slices.Contains(ids, f.GetUuid()) }
}

func verdictMatch(vs []flowpb.Verdict) matchFunc {
	return func(f *flowpb.Flow) bool { return slices.Contains(vs, f.GetVerdict()) }
}

func directionMatch(ds []flowpb.TrafficDirection) matchFunc {
	return func(f *flowpb.Flow) bool { return slices.Contains(ds, f.GetTrafficDirection()) }
}

// dropReasonMatch matches dropped flows only, as Hubble does.
func dropReasonMatch(rs []flowpb.DropReason) matchFunc {
	return func(f *flowpb.Flow) bool {
		return f.GetVerdict() == flowpb.Verdict_DROPPED && slices.Contains(rs, f.GetDropReasonDesc())
	}
}

func ipVersionMatch(vs []flowpb.IPVersion) matchFunc {
	return func(f *flowpb.Flow) bool { return slices.Contains(vs, f.GetIP().GetIpVersion()) }
}

// replyMatch is Hubble's: a flow whose direction is unknown never matches,
// except a dropped one, which counts as not a reply.
func replyMatch(rs []bool) matchFunc {
	return func(f *flowpb.Flow) bool {
		if f.GetIsReply() == nil && f.GetVerdict() != flowpb.Verdict_DROPPED {
			return false
		}
		return slices.Contains(rs, f.GetIsReply().GetValue())
	}
}

func encryptedMatch(es []bool) matchFunc {
	return func(f *flowpb.Flow) bool { return slices.Contains(es, f.GetIP().GetEncrypted()) }
}

func traceIDMatch(ids []string) matchFunc {
	return func(f *flowpb.Flow) bool {
		return slices.Contains(ids, f.GetTraceContext().GetParent().GetTraceId())
	}
}

func ipTraceIDMatch(ids []uint64) matchFunc {
	return func(f *flowpb.Flow) bool { return slices.Contains(ids, f.GetIpTraceId().GetTraceId()) }
}

// eventTypeMatch: a type of 0 matches any type; the sub-type is compared
// only when match_sub_type is set.
func eventTypeMatch(ts []*flowpb.EventTypeFilter) matchFunc {
	return func(f *flowpb.Flow) bool {
		ev := f.GetEventType()
		if ev == nil {
			return false
		}
		for _, t := range ts {
			if t.GetType() != 0 && t.GetType() != ev.GetType() {
				continue
			}
			if t.GetMatchSubType() && t.GetSubType() != ev.GetSubType() {
				continue
			}
			return true
		}
		return false
	}
}

// tcpFlagsMatch matches a flow that has every flag of one of the sets.
func tcpFlagsMatch(sets []*flowpb.TCPFlags) matchFunc {
	return func(f *flowpb.Flow) bool {
		got := f.GetL4().GetTCP().GetFlags()
		if got == nil {
			return false
		}
		for _, w := range sets {
			if (!w.GetFIN() || got.GetFIN()) && (!w.GetSYN() || got.GetSYN()) &&
				(!w.GetRST() || got.GetRST()) && (!w.GetPSH() || got.GetPSH()) &&
				(!w.GetACK() || got.GetACK()) && (!w.GetURG() || got.GetURG()) &&
				(!w.GetECE() || got.GetECE()) && (!w.GetCWR() || got.GetCWR()) &&
				(!w.GetNS() || got.GetNS()) {
				return true
			}
		}
		return false
	}
}

// interfaceMatch: an index of 0 and an empty name match any interface.
func interfaceMatch(ifs []*flowpb.NetworkInterface) matchFunc {
	return func(f *flowpb.Flow) bool {
		got := f.GetInterface()
		if got == nil {
			return false
		}
		for _, w := range ifs {
			if w.GetIndex() > 0 && w.GetIndex() != got.GetIndex() {
				continue
			}
			if w.GetName() != "" && w.GetName() != got.GetName() {
				continue
			}
			return true
		}
		return false
	}
}

// ipField compiles exact addresses (compared as the flow writes them) and
// CIDRs (the flow's address parsed only when there are any).
func ipField(name string, get func(*flowpb.FlowFilter) []string, ip func(*flowpb.IP) string) func(*flowpb.FlowFilter) (matchFunc, error) {
	return func(ff *flowpb.FlowFilter) (matchFunc, error) {
		var addrs []string
		var prefixes []netip.Prefix
		for _, v := range get(ff) {
			if strings.Contains(v, "/") {
				p, err := netip.ParsePrefix(v)
				if err != nil {
					return nil, invalid(name, v, err)
				}
				prefixes = append(prefixes, p)
				continue
			}
			if _, err := netip.ParseAddr(v); err != nil {
				return nil, invalid(name, v, err)
			}
			addrs = append(addrs, v)
		}
		return func(f *flowpb.Flow) bool {
			got := ip(f.GetIP())
			return got != "" && (slices.Contains(addrs, got) || inPrefixes(prefixes, got))
		}, nil
	}
}

func inPrefixes(ps []netip.Prefix, s string) bool {
	if len(ps) == 0 {
		return false
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return false
	}
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func identityField(get func(*flowpb.FlowFilter) []uint32, ep func(*flowpb.Flow) *flowpb.Endpoint) func(*flowpb.FlowFilter) (matchFunc, error) {
	return func(ff *flowpb.FlowFilter) (matchFunc, error) {
		ids := get(ff)
		return func(f *flowpb.Flow) bool {
			e := ep(f)
			return e != nil && slices.Contains(ids, e.GetIdentity())
		}, nil
	}
}

func clusterField(name string, get func(*flowpb.FlowFilter) []string, ep func(*flowpb.Flow) *flowpb.Endpoint) func(*flowpb.FlowFilter) (matchFunc, error) {
	return func(ff *flowpb.FlowFilter) (matchFunc, error) {
		names := get(ff)
		if slices.Contains(names, "") {
			return nil, invalid(name, "", fmt.Errorf("a cluster name must not be empty"))
		}
		return func(f *flowpb.Flow) bool { return slices.Contains(names, ep(f).GetClusterName()) }, nil
	}
}

func workloadField(get func(*flowpb.FlowFilter) []*flowpb.Workload, ep func(*flowpb.Flow) *flowpb.Endpoint) func(*flowpb.FlowFilter) (matchFunc, error) {
	return func(ff *flowpb.FlowFilter) (matchFunc, error) {
		want := get(ff)
		return func(f *flowpb.Flow) bool {
			for _, w := range ep(f).GetWorkloads() {
				for _, x := range want {
					if (x.GetName() == "" || x.GetName() == w.GetName()) && (x.GetKind() == "" || x.GetKind() == w.GetKind()) {
						return true
					}
				}
			}
			return false
		}, nil
	}
}

func portField(name string, get func(*flowpb.FlowFilter) []string, port func(*flowpb.Flow) (uint32, bool)) func(*flowpb.FlowFilter) (matchFunc, error) {
	return func(ff *flowpb.FlowFilter) (matchFunc, error) {
		var ports []uint32
		for _, v := range get(ff) {
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return nil, invalid(name, v, err)
			}
			ports = append(ports, uint32(p))
		}
		return func(f *flowpb.Flow) bool {
			p, ok := port(f)
			return ok && slices.Contains(ports, p)
		}, nil
	}
}

// sourcePort and destinationPort are a flow's ports, when its protocol
// has them.
func sourcePort(f *flowpb.Flow) (uint32, bool) {
	src, _, proto := flowl4.Of(f.GetL4())
	return src & 0xffff, flowl4.HasPorts(proto)
}

func destinationPort(f *flowpb.Flow) (uint32, bool) {
	_, dst, proto := flowl4.Of(f.GetL4())
	return dst & 0xffff, flowl4.HasPorts(proto)
}
