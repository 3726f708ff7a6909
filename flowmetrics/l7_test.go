package flowmetrics

import (
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// httpFlow is an L7 HTTP flow seen at the client (frontend → payments,
// egress) as the proxy reports it: a request, or its response (a reply,
// its ends swapped).
func httpFlow(typ flowpb.L7FlowType, verdict flowpb.Verdict, code uint32, latencyNs uint64) *flowpb.Flow {
	f := &flowpb.Flow{
		Verdict:   verdict,
		EventType: &flowpb.CiliumEventType{Type: eventAccessLog},
		Type:      flowpb.FlowType_L7,
		IP:        &flowpb.IP{Source: "10.1.1.10", Destination: "10.2.1.100", IpVersion: flowpb.IPVersion_IPv4},
		L4:        &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 40000, DestinationPort: 8080}}},
		Source:    frontend(), Destination: payments(),
		TrafficDirection: flowpb.TrafficDirection_EGRESS,
		IsReply:          wrapperspb.Bool(false),
		L7: &flowpb.Layer7{Type: typ, LatencyNs: latencyNs, Record: &flowpb.Layer7_Http{Http: &flowpb.HTTP{
			Code: code, Method: "GET", Url: "http://payments/v1/cart", Protocol: "HTTP/1.1"}}},
		TraceContext: &flowpb.TraceContext{Parent: &flowpb.TraceParent{TraceId: "4bf92f3577b34da6a3ce929d0e0e4736"}},
	}
	if typ == flowpb.L7FlowType_RESPONSE {
		f.Source, f.Destination = f.Destination, f.Source
		f.IP.Source, f.IP.Destination = f.IP.Destination, f.IP.Source
		f.IsReply = wrapperspb.Bool(true)
	}
	return f
}

func dnsFlow(reply bool, verdict flowpb.Verdict, rcode uint32, qtypes []string, ips ...string) *flowpb.Flow {
	f := &flowpb.Flow{
		Verdict:   verdict,
		EventType: &flowpb.CiliumEventType{Type: eventAccessLog},
		Type:      flowpb.FlowType_L7,
		Source:    frontend(), Destination: payments(),
		TrafficDirection: flowpb.TrafficDirection_EGRESS,
		IsReply:          wrapperspb.Bool(reply),
		L7: &flowpb.Layer7{Type: flowpb.L7FlowType_REQUEST, Record: &flowpb.Layer7_Dns{Dns: &flowpb.DNS{
			Query: "cart.shop.example.", Qtypes: qtypes, Ips: ips, Rcode: rcode, ObservationSource: "proxy"}}},
	}
	if reply {
		f.L7.Type = flowpb.L7FlowType_RESPONSE
		if len(ips) > 0 {
			f.L7.GetDns().Rrtypes = []string{"A"}
		}
	}
	return f
}

func TestHTTPMetrics(t *testing.T) {
	m, reg := newMetrics(t, "http:sourceContext=pod;destinationContext=workload")
	m.Observe(httpFlow(flowpb.L7FlowType_REQUEST, flowpb.Verdict_FORWARDED, 0, 0))
	m.Observe(httpFlow(flowpb.L7FlowType_RESPONSE, flowpb.Verdict_FORWARDED, 200, 4_910_000))
	m.Observe(httpFlow(flowpb.L7FlowType_REQUEST, flowpb.Verdict_DROPPED, 0, 0))
	m.Observe(httpFlow(flowpb.L7FlowType_RESPONSE, flowpb.Verdict_DROPPED, 403, 100_000))
	m.Observe(tcpFlow(flowpb.Verdict_FORWARDED, nil, false)) // not HTTP: not counted
	expect(t, reg, `
# HELP hubble_http_requests_total Count of HTTP requests
# TYPE hubble_http_requests_total counter
hubble_http_requests_total{destination="shop/payments",method="GET",protocol="HTTP/1.1",reporter="client",source="shop/frontend-7d9f"} 2
# HELP hubble_http_responses_total Count of HTTP responses
# TYPE hubble_http_responses_total counter
hubble_http_responses_total{destination="shop/frontend",method="GET",protocol="HTTP/1.1",reporter="client",source="shop/payments-0",status="200"} 1
hubble_http_responses_total{destination="shop/frontend",method="GET",protocol="HTTP/1.1",reporter="client",source="shop/payments-0",status="403"} 1
`, "hubble_http_requests_total", "hubble_http_responses_total")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var count uint64
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == "hubble_http_request_duration_seconds" {
			for _, mm := range mf.GetMetric() {
				count += mm.GetHistogram().GetSampleCount()
				sum += mm.GetHistogram().GetSampleSum()
				if ex := mm.GetHistogram().GetBucket()[0].GetExemplar(); ex != nil {
					t.Errorf("an exemplar without exemplars=true: %v", ex)
				}
			}
		}
	}
	if count != 2 || sum < 0.00500 || sum > 0.00502 {
		t.Errorf("duration histogram: %d observations summing %v s, want 2 summing 0.00501 s", count, sum)
	}
}

// TestHTTPV2Metrics: httpV2 counts responses only, with their status, and
// labels them by the request's ends (the client as source).
func TestHTTPV2Metrics(t *testing.T) {
	m, reg := newMetrics(t, "httpV2:sourceContext=pod;destinationContext=workload;labelsContext=source_namespace,destination_cluster")
	m.Observe(httpFlow(flowpb.L7FlowType_REQUEST, flowpb.Verdict_FORWARDED, 0, 0))
	m.Observe(httpFlow(flowpb.L7FlowType_RESPONSE, flowpb.Verdict_FORWARDED, 503, 1_000_000))
	expect(t, reg, `
# HELP hubble_http_requests_total Count of HTTP requests
# TYPE hubble_http_requests_total counter
hubble_http_requests_total{destination="shop/payments-0",destination_cluster="west",method="GET",protocol="HTTP/1.1",reporter="client",source="shop/frontend",source_namespace="shop",status="503"} 1
`, "hubble_http_requests_total")
}

// TestHTTPExemplars: with exemplars=true, observations carry the flow's
// trace id, which /metrics shows when read as OpenMetrics.
func TestHTTPExemplars(t *testing.T) {
	m, reg := newMetrics(t, "http:exemplars=true")
	m.Observe(httpFlow(flowpb.L7FlowType_RESPONSE, flowpb.Verdict_FORWARDED, 200, 2_000_000))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]string{}
	for _, mf := range mfs {
		for _, mm := range mf.GetMetric() {
			ex := mm.GetCounter().GetExemplar()
			for _, b := range mm.GetHistogram().GetBucket() {
				if b.GetExemplar() != nil {
					ex = b.GetExemplar()
				}
			}
			for _, l := range ex.GetLabel() {
				found[mf.GetName()] = l.GetName() + "=" + l.GetValue()
			}
		}
	}
	want := "traceID=4bf92f3577b34da6a3ce929d0e0e4736"
	for _, name := range []string{"hubble_http_responses_total", "hubble_http_request_duration_seconds"} {
		if found[name] != want {
			t.Errorf("%s exemplar: %q, want %q", name, found[name], want)
		}
	}
}

func TestDNSMetrics(t *testing.T) {
	m, reg := newMetrics(t, "dns:query;ignoreAAAA;sourceContext=namespace")
	m.Observe(dnsFlow(false, flowpb.Verdict_FORWARDED, 0, []string{"A"}))
	m.Observe(dnsFlow(true, flowpb.Verdict_FORWARDED, 0, []string{"A"}, "10.2.1.100", "10.2.1.101"))
	m.Observe(dnsFlow(false, flowpb.Verdict_DROPPED, 0, []string{"A"}))
	m.Observe(dnsFlow(true, flowpb.Verdict_FORWARDED, 3, []string{"A"}))
	m.Observe(dnsFlow(false, flowpb.Verdict_FORWARDED, 0, []string{"AAAA"})) // ignored
	expect(t, reg, `
# HELP hubble_dns_queries_total Number of DNS queries observed
# TYPE hubble_dns_queries_total counter
hubble_dns_queries_total{ips_returned="0",qtypes="A",query="cart.shop.example.",rcode="",source="shop"} 1
hubble_dns_queries_total{ips_returned="0",qtypes="A",query="cart.shop.example.",rcode="Policy denied",source="shop"} 1
# HELP hubble_dns_responses_total Number of DNS responses observed
# TYPE hubble_dns_responses_total counter
hubble_dns_responses_total{ips_returned="0",qtypes="A",query="cart.shop.example.",rcode="Non-Existent Domain",source="shop"} 1
hubble_dns_responses_total{ips_returned="2",qtypes="A",query="cart.shop.example.",rcode="No Error",source="shop"} 1
# HELP hubble_dns_response_types_total Number of DNS response types observed
# TYPE hubble_dns_response_types_total counter
hubble_dns_response_types_total{qtypes="A",query="cart.shop.example.",source="shop",type="A"} 1
`, "hubble_dns_queries_total", "hubble_dns_responses_total", "hubble_dns_response_types_total")
}

// TestDeletePodL7: a deleted pod's series go from every vector of an L7
// metric.
func TestDeletePodL7(t *testing.T) {
	m, reg := newMetrics(t, "http:sourceContext=pod")
	m.Observe(httpFlow(flowpb.L7FlowType_REQUEST, flowpb.Verdict_FORWARDED, 0, 0))
	m.Observe(httpFlow(flowpb.L7FlowType_RESPONSE, flowpb.Verdict_FORWARDED, 200, 1))
	m.DeletePod("shop", "frontend-7d9f")
	m.DeletePod("shop", "payments-0")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if n := len(mf.GetMetric()); n != 0 {
			t.Errorf("%s: %d series left after both pods were deleted", mf.GetName(), n)
		}
	}
}

func BenchmarkObserveHTTP(b *testing.B) {
	m, _ := newMetrics(b, "http:sourceContext=pod;destinationContext=workload")
	req := httpFlow(flowpb.L7FlowType_REQUEST, flowpb.Verdict_FORWARDED, 0, 0)
	resp := httpFlow(flowpb.L7FlowType_RESPONSE, flowpb.Verdict_FORWARDED, 200, 4_910_000)
	b.ReportAllocs()
	for b.Loop() {
		m.Observe(req)
		m.Observe(resp)
	}
}
