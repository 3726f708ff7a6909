package hubbleflags

import (
	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// filterFlag is one filter flag: how it appears on the command line and
// what it adds to a tracker.
type filterFlag struct {
	name, short string
	// noOpt is the value of the flag given without one (--reply, -4).
	noOpt string
	help  string
	set   setter
}

// setter adds a flag's value to a tracker.
type setter func(t *tracker, val string) error

// field adds a value to one field of a FlowFilter.
type field[T any] func(ff *flowpb.FlowFilter, v T)

// same adds the value to the field of both filters: a --from-X or --to-X
// flag, or a field without a direction (--verdict).
func same(add field[string]) setter {
	return sameParsed(func(s string) (string, error) { return s, nil }, add)
}

// either adds the value to src of the left filter and to dst of the right
// one: an either-direction flag (--pod, --ip, --label).
func either(src, dst field[string]) setter {
	return eitherParsed(func(s string) (string, error) { return s, nil }, src, dst)
}

func sameParsed[T any](parse func(string) (T, error), add field[T]) setter {
	return func(t *tracker, val string) error {
		v, err := parse(val)
		if err != nil {
			return err
		}
		t.both(func(ff *flowpb.FlowFilter) { add(ff, v) })
		return nil
	}
}

func eitherParsed[T any](parse func(string) (T, error), src, dst field[T]) setter {
	return func(t *tracker, val string) error {
		v, err := parse(val)
		if err != nil {
			return err
		}
		t.onLeft(func(ff *flowpb.FlowFilter) { src(ff, v) })
		t.onRight(func(ff *flowpb.FlowFilter) { dst(ff, v) })
		return nil
	}
}

// constant adds a fixed value whatever the flag's value (--reply, --ipv4).
func constant[T any](v T, add field[T]) setter {
	return sameParsed(func(string) (T, error) { return v, nil }, add)
}

// namespace adds to one of the tracker's namespace lists; all is the
// --all-namespaces variant (the value is ignored: every namespace).
func namespace(list func(t *tracker) *[]string, all bool) setter {
	return func(t *tracker, val string) error {
		if all {
			val = ""
		}
		l := list(t)
		*l = append(*l, val)
		return nil
	}
}

func wrap[T any](f func(string) T) func(string) (T, error) {
	return func(s string) (T, error) { return f(s), nil }
}

// The fields of FlowFilter the flags fill.
var (
	srcPod     field[string] = func(ff *flowpb.FlowFilter, v string) { ff.SourcePod = append(ff.SourcePod, v) }
	dstPod     field[string] = func(ff *flowpb.FlowFilter, v string) { ff.DestinationPod = append(ff.DestinationPod, v) }
	srcIP      field[string] = func(ff *flowpb.FlowFilter, v string) { ff.SourceIp = append(ff.SourceIp, v) }
	dstIP      field[string] = func(ff *flowpb.FlowFilter, v string) { ff.DestinationIp = append(ff.DestinationIp, v) }
	srcFQDN    field[string] = func(ff *flowpb.FlowFilter, v string) { ff.SourceFqdn = append(ff.SourceFqdn, v) }
	dstFQDN    field[string] = func(ff *flowpb.FlowFilter, v string) { ff.DestinationFqdn = append(ff.DestinationFqdn, v) }
	srcLabel   field[string] = func(ff *flowpb.FlowFilter, v string) { ff.SourceLabel = append(ff.SourceLabel, v) }
	dstLabel   field[string] = func(ff *flowpb.FlowFilter, v string) { ff.DestinationLabel = append(ff.DestinationLabel, v) }
	srcService field[string] = func(ff *flowpb.FlowFilter, v string) { ff.SourceService = append(ff.SourceService, v) }
	dstService field[string] = func(ff *flowpb.FlowFilter, v string) { ff.DestinationService = append(ff.DestinationService, v) }
	srcPort    field[string] = func(ff *flowpb.FlowFilter, v string) { ff.SourcePort = append(ff.SourcePort, v) }
	dstPort    field[string] = func(ff *flowpb.FlowFilter, v string) { ff.DestinationPort = append(ff.DestinationPort, v) }
	srcCluster field[string] = func(ff *flowpb.FlowFilter, v string) { ff.SourceClusterName = append(ff.SourceClusterName, v) }
	dstCluster field[string] = func(ff *flowpb.FlowFilter, v string) {
		ff.DestinationClusterName = append(ff.DestinationClusterName, v)
	}
	srcIdentity field[uint32] = func(ff *flowpb.FlowFilter, v uint32) { ff.SourceIdentity = append(ff.SourceIdentity, v) }
	dstIdentity field[uint32] = func(ff *flowpb.FlowFilter, v uint32) { ff.DestinationIdentity = append(ff.DestinationIdentity, v) }

	srcWorkload field[*flowpb.Workload] = func(ff *flowpb.FlowFilter, v *flowpb.Workload) {
		ff.SourceWorkload = append(ff.SourceWorkload, v)
	}
	dstWorkload field[*flowpb.Workload] = func(ff *flowpb.FlowFilter, v *flowpb.Workload) {
		ff.DestinationWorkload = append(ff.DestinationWorkload, v)
	}
	ipVersion field[flowpb.IPVersion] = func(ff *flowpb.FlowFilter, v flowpb.IPVersion) { ff.IpVersion = append(ff.IpVersion, v) }
	encrypted field[bool]             = func(ff *flowpb.FlowFilter, v bool) { ff.Encrypted = append(ff.Encrypted, v) }
	reply     field[bool]             = func(ff *flowpb.FlowFilter, v bool) { ff.Reply = append(ff.Reply, v) }
)

// filterFlags are Hubble observe's filter flags, in Hubble's order, with
// Hubble's semantics. Help texts are this project's.
var filterFlags = []filterFlag{
	{name: "not", noOpt: "true", help: "negate the filter flag that follows: flows it matches are left out (--not --verdict FORWARDED)"},
	{name: "uuid", help: "only the flow with this unique identifier", set: same(func(ff *flowpb.FlowFilter, v string) { ff.Uuid = append(ff.Uuid, v) })},
	{name: "node-name", help: `only flows observed on these nodes: CLUSTER/NODE, with * wildcards ("east/*", "*/node-1")`,
		set: same(func(ff *flowpb.FlowFilter, v string) { ff.NodeName = append(ff.NodeName, v) })},
	{name: "node-label", help: `only flows observed on nodes matching this label selector ("topology.kubernetes.io/zone=a")`,
		set: same(func(ff *flowpb.FlowFilter, v string) { ff.NodeLabels = append(ff.NodeLabels, v) })},
	{name: "from-cluster", help: "only flows whose source is in this cluster", set: same(srcCluster)},
	{name: "cluster", help: `only flows with either end in this cluster (wildcards: "prod-*")`, set: either(srcCluster, dstCluster)},
	{name: "to-cluster", help: "only flows whose destination is in this cluster", set: same(dstCluster)},
	{name: "protocol", help: "only flows of this L4 or L7 protocol: tcp, udp, sctp, icmp, icmpv4, icmpv6, vrrp, igmp, dns, http",
		set: same(func(ff *flowpb.FlowFilter, v string) { ff.Protocol = append(ff.Protocol, v) })},
	{name: "tcp-flags", help: `only TCP flows with all these flags set (comma-separated: "syn", "syn,ack", "fin")`,
		set: sameParsed(ParseTCPFlags, func(ff *flowpb.FlowFilter, v *flowpb.TCPFlags) { ff.TcpFlags = append(ff.TcpFlags, v) })},
	{name: "type", short: "t", help: typeHelp,
		set: sameParsed(ParseEventType, func(ff *flowpb.FlowFilter, v *flowpb.EventTypeFilter) { ff.EventType = append(ff.EventType, v) })},
	{name: "verdict", help: "only flows with this verdict: FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR, TRACED, TRANSLATED",
		set: sameParsed(ParseVerdict, func(ff *flowpb.FlowFilter, v flowpb.Verdict) { ff.Verdict = append(ff.Verdict, v) })},
	{name: "drop-reason-desc", help: `only drops for this reason, as Hubble names it ("POLICY_DENIED", "STALE_OR_UNROUTABLE_IP")`,
		set: sameParsed(ParseDropReason, func(ff *flowpb.FlowFilter, v flowpb.DropReason) { ff.DropReasonDesc = append(ff.DropReasonDesc, v) })},
	{name: "http-status", help: `only HTTP flows with this status code, or prefix ("404", "5+")`,
		set: same(func(ff *flowpb.FlowFilter, v string) { ff.HttpStatusCode = append(ff.HttpStatusCode, v) })},
	{name: "http-method", help: `only HTTP flows with this method ("get", "post")`,
		set: same(func(ff *flowpb.FlowFilter, v string) { ff.HttpMethod = append(ff.HttpMethod, v) })},
	{name: "http-path", help: `only HTTP flows whose path matches this regular expression ("/orders/\d+")`,
		set: same(func(ff *flowpb.FlowFilter, v string) { ff.HttpPath = append(ff.HttpPath, v) })},
	{name: "http-url", help: `only HTTP flows whose URL matches this regular expression`,
		set: same(func(ff *flowpb.FlowFilter, v string) { ff.HttpUrl = append(ff.HttpUrl, v) })},
	{name: "http-header", help: `only HTTP flows with this header NAME:VALUE ("x-tenant:blue")`,
		set: sameParsed(parseHTTPHeader, func(ff *flowpb.FlowFilter, v *flowpb.HTTPHeader) { ff.HttpHeader = append(ff.HttpHeader, v) })},
	{name: "trace-id", help: "only flows of this trace id (L7 tracing)",
		set: same(func(ff *flowpb.FlowFilter, v string) { ff.TraceId = append(ff.TraceId, v) })},
	{name: "ip-trace-id", help: "only flows of this IP trace id (a number above 0)",
		set: sameParsed(parseIPTraceID, func(ff *flowpb.FlowFilter, v uint64) { ff.IpTraceId = append(ff.IpTraceId, v) })},
	{name: "from-fqdn", help: `only flows from this DNS name (wildcards: "*.example.com")`, set: same(srcFQDN)},
	{name: "fqdn", help: "only flows with either end at this DNS name", set: either(srcFQDN, dstFQDN)},
	{name: "to-fqdn", help: "only flows to this DNS name", set: same(dstFQDN)},
	{name: "from-ip", help: "only flows from this address or CIDR (10.1.1.11, 10.1.0.0/16)", set: same(srcIP)},
	{name: "snat-ip", help: "only flows source-NATed to this address or CIDR",
		set: same(func(ff *flowpb.FlowFilter, v string) { ff.SourceIpXlated = append(ff.SourceIpXlated, v) })},
	{name: "ip", help: "only flows with either end at this address or CIDR", set: either(srcIP, dstIP)},
	{name: "to-ip", help: "only flows to this address or CIDR", set: same(dstIP)},
	{name: "ipv4", short: "4", noOpt: "v4", help: "only IPv4 flows", set: constant(flowpb.IPVersion_IPv4, ipVersion)},
	{name: "ipv6", short: "6", noOpt: "v6", help: "only IPv6 flows", set: constant(flowpb.IPVersion_IPv6, ipVersion)},
	{name: "ip-version", help: "only flows of this IP version: v4, v6, or none (flows without IP, such as ARP)",
		set: sameParsed(ParseIPVersion, ipVersion)},
	{name: "from-pod", help: "only flows from pods of this name prefix: [NAMESPACE/]POD (without a namespace, in default)", set: same(srcPod)},
	{name: "pod", help: "only flows with either end in pods of this name prefix: [NAMESPACE/]POD (without a namespace, in default)", set: either(srcPod, dstPod)},
	{name: "to-pod", help: "only flows to pods of this name prefix: [NAMESPACE/]POD (without a namespace, in default)", set: same(dstPod)},
	{name: "from-namespace", help: "only flows from this namespace", set: namespace(func(t *tracker) *[]string { return &t.srcNs }, false)},
	{name: "namespace", short: "n", help: "only flows with either end in this namespace", set: namespace(func(t *tracker) *[]string { return &t.ns }, false)},
	{name: "to-namespace", help: "only flows to this namespace", set: namespace(func(t *tracker) *[]string { return &t.dstNs }, false)},
	{name: "from-all-namespaces", noOpt: "true", help: "only flows from a pod, in any namespace", set: namespace(func(t *tracker) *[]string { return &t.srcNs }, true)},
	{name: "all-namespaces", short: "A", noOpt: "true", help: "only flows with either end a pod, in any namespace", set: namespace(func(t *tracker) *[]string { return &t.ns }, true)},
	{name: "to-all-namespaces", noOpt: "true", help: "only flows to a pod, in any namespace", set: namespace(func(t *tracker) *[]string { return &t.dstNs }, true)},
	{name: "from-label", help: `only flows from endpoints with these labels, a selector ("app=frontend", "reserved:world", "k8s:app in (a,b)")`, set: same(srcLabel)},
	{name: "label", short: "l", help: "only flows with either end an endpoint with these labels, a selector", set: either(srcLabel, dstLabel)},
	{name: "to-label", help: "only flows to endpoints with these labels, a selector", set: same(dstLabel)},
	{name: "from-service", help: "only flows from this service name prefix: [NAMESPACE/]SERVICE", set: same(srcService)},
	{name: "service", help: "only flows with either end this service name prefix: [NAMESPACE/]SERVICE", set: either(srcService, dstService)},
	{name: "to-service", help: "only flows to this service name prefix: [NAMESPACE/]SERVICE", set: same(dstService)},
	{name: "from-port", help: "only flows from this port (8080)", set: same(srcPort)},
	{name: "port", help: "only flows with this port at either end", set: either(srcPort, dstPort)},
	{name: "to-port", help: "only flows to this port", set: same(dstPort)},
	{name: "from-workload", help: "only flows from this workload: [KIND/]NAME (Deployment/frontend, frontend)", set: sameParsed(wrap(ParseWorkload), srcWorkload)},
	{name: "workload", help: "only flows with either end this workload: [KIND/]NAME", set: eitherParsed(wrap(ParseWorkload), srcWorkload, dstWorkload)},
	{name: "to-workload", help: "only flows to this workload: [KIND/]NAME", set: sameParsed(wrap(ParseWorkload), dstWorkload)},
	{name: "from-identity", help: "only flows from this security identity: a number or a reserved name (world, host, remote-node, ...)", set: sameParsed(ParseIdentity, srcIdentity)},
	{name: "identity", help: "only flows with either end of this security identity", set: eitherParsed(ParseIdentity, srcIdentity, dstIdentity)},
	{name: "to-identity", help: "only flows to this security identity", set: sameParsed(ParseIdentity, dstIdentity)},
	{name: "traffic-direction", help: "only flows in this direction, as the endpoint sees it: ingress or egress",
		set: sameParsed(ParseTrafficDirection, func(ff *flowpb.FlowFilter, v flowpb.TrafficDirection) {
			ff.TrafficDirection = append(ff.TrafficDirection, v)
		})},
	{name: "cel-expression", help: "only flows this CEL expression accepts (servers without CEL refuse it)", set: same(addCEL)},
	{name: "interface", help: "only flows observed at this network interface (eth0)",
		set: same(func(ff *flowpb.FlowFilter, v string) {
			ff.Interface = append(ff.Interface, &flowpb.NetworkInterface{Name: v})
		})},
	{name: "encrypted", noOpt: "true", help: "only encrypted flows (WireGuard, IPsec)", set: constant(true, encrypted)},
	{name: "unencrypted", noOpt: "true", help: "only unencrypted flows", set: constant(false, encrypted)},
	{name: "reply", noOpt: "true", help: "only replies (packets of the direction opposite to the connection's first)", set: constant(true, reply)},
	{name: "not-reply", noOpt: "true", help: "only packets that are not replies", set: constant(false, reply)},
}

func addCEL(ff *flowpb.FlowFilter, v string) {
	if ff.Experimental == nil {
		ff.Experimental = &flowpb.FlowFilter_Experimental{}
	}
	ff.Experimental.CelExpression = append(ff.Experimental.CelExpression, v)
}

const typeHelp = `only events of this type, TYPE[:SUBTYPE]:
  drop, policy-verdict, trace-sock, capture, l7, and
  trace[:to-endpoint|to-proxy|to-host|to-stack|to-overlay|to-network|to-crypto|
  from-endpoint|from-proxy|from-host|from-stack|from-overlay|from-network|from-crypto];
  or numbers (Cilium's message types: drop 1, trace 4, policy-verdict 5, trace-sock 7)`
