package flowfilter

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// protocols are the bits of the protocols Hubble filters on.
const (
	protoICMPv4 = 1 << iota
	protoICMPv6
	protoTCP
	protoUDP
	protoSCTP
	protoVRRP
	protoIGMP
	protoDNS
	protoHTTP
)

var protocolBits = map[string]uint16{
	"icmp": protoICMPv4 | protoICMPv6, "icmpv4": protoICMPv4, "icmpv6": protoICMPv6,
	"tcp": protoTCP, "udp": protoUDP, "sctp": protoSCTP, "vrrp": protoVRRP, "igmp": protoIGMP,
	"dns": protoDNS, "http": protoHTTP,
}

// protocolMatch takes Hubble's names in any case: icmp (v4 or v6), icmpv4,
// icmpv6, tcp, udp, sctp, vrrp, igmp, and the L7 dns and http.
func protocolMatch(names []string) (matchFunc, error) {
	var want uint16
	for _, n := range names {
		b, ok := protocolBits[strings.ToLower(n)]
		if !ok {
			return nil, invalid("protocol", n, fmt.Errorf("want one of icmp, icmpv4, icmpv6, tcp, udp, sctp, vrrp, igmp, dns, http"))
		}
		want |= b
	}
	return func(f *flowpb.Flow) bool { return flowProtocols(f)&want != 0 }, nil
}

func flowProtocols(f *flowpb.Flow) uint16 {
	var got uint16
	switch f.GetL4().GetProtocol().(type) {
	case *flowpb.Layer4_ICMPv4:
		got = protoICMPv4
	case *flowpb.Layer4_ICMPv6:
		got = protoICMPv6
	case *flowpb.Layer4_TCP:
		got = protoTCP
	case *flowpb.Layer4_UDP:
		got = protoUDP
	case *flowpb.Layer4_SCTP:
		got = protoSCTP
	case *flowpb.Layer4_VRRP:
		got = protoVRRP
	case *flowpb.Layer4_IGMP:
		got = protoIGMP
	}
	switch f.GetL7().GetRecord().(type) {
	case *flowpb.Layer7_Dns:
		got |= protoDNS
	case *flowpb.Layer7_Http:
		got |= protoHTTP
	}
	return got
}

// nsName is a parsed "namespace/name-prefix": Hubble's "name" alone means
// the default namespace, "namespace/" every name in it.
type nsName struct{ ns, prefix string }

func parseNamespaceName(s string) nsName {
	parts := strings.Split(s, "/")
	switch {
	case len(parts) > 1:
		return nsName{parts[0], parts[1]}
	case parts[0] == "":
		return nsName{}
	default:
		return nsName{"default", parts[0]}
	}
}

func nameField(field string, get func(*flowpb.FlowFilter) []string, name func(*flowpb.Flow) (ns, name string)) func(*flowpb.FlowFilter) (matchFunc, error) {
	return func(ff *flowpb.FlowFilter) (matchFunc, error) {
		var want []nsName
		for _, v := range get(ff) {
			if v == "" {
				return nil, invalid(field, v, fmt.Errorf("a name must not be empty"))
			}
			want = append(want, parseNamespaceName(v))
		}
		return func(f *flowpb.Flow) bool {
			ns, n := name(f)
			if ns == "" && n == "" {
				return false
			}
			for _, w := range want {
				if (w.prefix == "" || strings.HasPrefix(n, w.prefix)) && (w.ns == "" || w.ns == ns) {
					return true
				}
			}
			return false
		}, nil
	}
}

func sourcePod(f *flowpb.Flow) (string, string) {
	return f.GetSource().GetNamespace(), f.GetSource().GetPodName()
}

func destinationPod(f *flowpb.Flow) (string, string) {
	return f.GetDestination().GetNamespace(), f.GetDestination().GetPodName()
}

func sourceService(f *flowpb.Flow) (string, string) {
	return f.GetSourceService().GetNamespace(), f.GetSourceService().GetName()
}

func destinationService(f *flowpb.Flow) (string, string) {
	return f.GetDestinationService().GetNamespace(), f.GetDestinationService().GetName()
}

// noLabels is the label list of an absent endpoint; never written.
var noLabels []string

func sourceLabels(f *flowpb.Flow) *[]string {
	if f.GetSource() == nil {
		return &noLabels
	}
	return &f.Source.Labels
}

func destinationLabels(f *flowpb.Flow) *[]string {
	if f.GetDestination() == nil {
		return &noLabels
	}
	return &f.Destination.Labels
}

func nodeLabels(f *flowpb.Flow) *[]string { return &f.NodeLabels }

func fqdnField(field string, get func(*flowpb.FlowFilter) []string, names func(*flowpb.Flow) []string) func(*flowpb.FlowFilter) (matchFunc, error) {
	return func(ff *flowpb.FlowFilter) (matchFunc, error) {
		re, err := compileFQDNPatterns(get(ff))
		if err != nil {
			return nil, fmt.Errorf("field %q: %w", field, err)
		}
		return func(f *flowpb.Flow) bool {
			return slices.ContainsFunc(names(f), re.MatchString)
		}, nil
	}
}

// defaultClusterName is Cilium's default cluster name, which Hubble puts
// before a node name that has no cluster ("node" is "default/node").
const defaultClusterName = "default"

// nodeNameMatch takes Hubble's node patterns: "cluster/node" or "node" (any
// cluster), each part an FQDN pattern where * matches within and across
// labels and an empty part matches anything.
func nodeNameMatch(patterns []string) (matchFunc, error) {
	re, err := compileNodeNamePatterns(patterns)
	if err != nil {
		return nil, fmt.Errorf("field %q: %w", "node_name", err)
	}
	return func(f *flowpb.Flow) bool {
		n := f.GetNodeName()
		if n == "" {
			return false
		}
		if !strings.Contains(n, "/") {
			n = defaultClusterName + "/" + n
		}
		return re.MatchString(n)
	}, nil
}

func compileRegexps(field string, exprs []string) ([]*regexp.Regexp, error) {
	out := make([]*regexp.Regexp, 0, len(exprs))
	for _, e := range exprs {
		re, err := regexp.Compile(e)
		if err != nil {
			return nil, invalid(field, e, err)
		}
		out = append(out, re)
	}
	return out, nil
}

func dnsQueryMatch(exprs []string) (matchFunc, error) {
	res, err := compileRegexps("dns_query", exprs)
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		dns := f.GetL7().GetDns()
		if dns == nil {
			return false
		}
		return slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(dns.GetQuery()) })
	}, nil
}
