package flowfilter

import (
	"slices"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// sampleFlows are six flows of a two-cluster mesh, named for the tables.
func sampleFlows() map[string]*flowpb.Flow {
	frontend := &flowpb.Endpoint{ClusterName: "west", Namespace: "shop", PodName: "frontend-1", Identity: 132000,
		Labels:    []string{"k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=shop"},
		Workloads: []*flowpb.Workload{{Name: "frontend", Kind: "Deployment"}}}
	checkout := func(pod string) *flowpb.Endpoint {
		return &flowpb.Endpoint{ClusterName: "east", Namespace: "shop", PodName: pod, Identity: 70001,
			Labels: []string{"k8s:app=checkout", "k8s:io.kubernetes.pod.namespace=shop"}}
	}
	tcp := func(sport, dport uint32, flags *flowpb.TCPFlags) *flowpb.Layer4 {
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: sport, DestinationPort: dport, Flags: flags}}}
	}
	v4 := func(src, dst string) *flowpb.IP {
		return &flowpb.IP{Source: src, Destination: dst, IpVersion: flowpb.IPVersion_IPv4}
	}
	return map[string]*flowpb.Flow{
		"fe-to-checkout": {Uuid: "f1", IP: v4("10.1.2.3", "10.2.0.5"), L4: tcp(41234, 8080, &flowpb.TCPFlags{SYN: true}),
			Source: frontend, Destination: checkout("checkout-0"), Verdict: flowpb.Verdict_FORWARDED,
			TrafficDirection: flowpb.TrafficDirection_INGRESS, EventType: &flowpb.CiliumEventType{Type: 4},
			NodeName: "east/node-1", NodeLabels: []string{"k8s:kubernetes.io/hostname=node-1", "k8s:topology.kubernetes.io/zone=a"},
			IsReply: wrapperspb.Bool(false), DestinationService: &flowpb.Service{Namespace: "shop", Name: "checkout"}},
		"world-drop": {IP: v4("192.0.2.7", "10.2.0.6"), L4: tcp(51000, 8080, &flowpb.TCPFlags{SYN: true}),
			Source: &flowpb.Endpoint{Identity: 2, Labels: []string{"reserved:world", "cidr:192.0.2.0/24", "cidr:fd00--/64"}}, Destination: checkout("checkout-1"),
			Verdict: flowpb.Verdict_DROPPED, DropReasonDesc: flowpb.DropReason_POLICY_DENIED,
			TrafficDirection: flowpb.TrafficDirection_INGRESS, EventType: &flowpb.CiliumEventType{Type: 1, SubType: 133},
			NodeName: "east/node-1"},
		"dns": {IP: v4("10.2.0.5", "10.2.0.10"),
			L4:     &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: 40000, DestinationPort: 53}}},
			Source: checkout("checkout-0"), Destination: &flowpb.Endpoint{ClusterName: "east", Namespace: "kube-system",
				PodName: "coredns-abc", Identity: 70100, Labels: []string{"k8s:app=coredns"}},
			Verdict: flowpb.Verdict_FORWARDED, TrafficDirection: flowpb.TrafficDirection_EGRESS,
			EventType: &flowpb.CiliumEventType{Type: 4, SubType: 3}, NodeName: "east/node-2", IsReply: wrapperspb.Bool(false),
			DestinationNames: []string{"api.example.com"},
			L7:               &flowpb.Layer7{Record: &flowpb.Layer7_Dns{Dns: &flowpb.DNS{Query: "api.example.com."}}}},
		"http-503": {IP: v4("10.1.2.3", "10.2.0.5"), L4: tcp(41300, 8080, &flowpb.TCPFlags{ACK: true, PSH: true}),
			Source: &flowpb.Endpoint{ClusterName: "west", Namespace: "shop", PodName: "frontend-1", Identity: 132000,
				Labels: []string{"k8s:app=frontend"}},
			Destination: checkout("checkout-0"), Verdict: flowpb.Verdict_FORWARDED,
			TrafficDirection: flowpb.TrafficDirection_INGRESS, EventType: &flowpb.CiliumEventType{Type: 129},
			NodeName: "west/node-3", IsReply: wrapperspb.Bool(true),
			TraceContext: &flowpb.TraceContext{Parent: &flowpb.TraceParent{TraceId: "t1"}},
			L7: &flowpb.Layer7{Record: &flowpb.Layer7_Http{Http: &flowpb.HTTP{Code: 503, Method: "GET",
				Url: "http://checkout.shop:8080/api/pay?x=1", Headers: []*flowpb.HTTPHeader{{Key: "x-req", Value: "1"}}}}}},
		"v6-reply": {Uuid: "abc", IP: &flowpb.IP{Source: "fd00::1", Destination: "fd00::2", SourceXlated: "10.0.0.1",
			IpVersion: flowpb.IPVersion_IPv6, Encrypted: true}, L4: tcp(443, 50000, &flowpb.TCPFlags{ACK: true}),
			Verdict: flowpb.Verdict_FORWARDED, EventType: &flowpb.CiliumEventType{Type: 4}, NodeName: "node-4",
			IsReply: wrapperspb.Bool(true), Interface: &flowpb.NetworkInterface{Index: 7, Name: "eth0"}},
		"policy-verdict": {IP: v4("10.1.2.3", "10.2.1.9"), L4: tcp(41400, 5432, &flowpb.TCPFlags{SYN: true, ACK: true}),
			Source: frontend, Destination: &flowpb.Endpoint{ClusterName: "east", Namespace: "db", PodName: "postgres-0",
				Identity: 70200, Labels: []string{"k8s:app=postgres"}},
			Verdict: flowpb.Verdict_FORWARDED, TrafficDirection: flowpb.TrafficDirection_EGRESS,
			EventType: &flowpb.CiliumEventType{Type: 5}, NodeName: "west/node-3", IsReply: wrapperspb.Bool(false),
			IpTraceId: &flowpb.IPTraceID{TraceId: 42}},
	}
}

// parseFilters reads FlowFilters written in protojson, as `hubble observe
// --print-raw-filters` prints them.
func parseFilters(t testing.TB, js []string) []*flowpb.FlowFilter {
	t.Helper()
	var out []*flowpb.FlowFilter
	for _, j := range js {
		ff := &flowpb.FlowFilter{}
		if err := protojson.Unmarshal([]byte(j), ff); err != nil {
			t.Fatalf("parsing filter %s: %v", j, err)
		}
		out = append(out, ff)
	}
	return out
}

// matching names the sample flows that f matches, sorted.
func matching(f *Filter) []string {
	var names []string
	for name, fl := range sampleFlows() {
		if f.Match(fl) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

func checkMatches(t *testing.T, what string, allow, deny []string, want []string) {
	t.Helper()
	f, err := Compile(parseFilters(t, allow), parseFilters(t, deny))
	if err != nil {
		t.Fatalf("%s: Compile: %v", what, err)
	}
	want = slices.Clone(want)
	slices.Sort(want)
	if got := matching(f); !slices.Equal(got, want) {
		t.Errorf("%s: matches %q, want %q", what, got, want)
	}
}
