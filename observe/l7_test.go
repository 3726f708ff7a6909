package observe

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
)

// proxyHTTP is an L7 HTTP flow as the proxy reports it: west's frontend
// (10.2.1.5, identity 132000) asking east's checkout (10.1.1.11, 70001),
// seen at the server (ingress); a response is a reply, its ends swapped.
func proxyHTTP(typ flowpb.L7FlowType, v flowpb.Verdict, code uint32, latency time.Duration, headers ...*flowpb.HTTPHeader) *flowpb.Flow {
	f := &flowpb.Flow{
		Time:    timestamppb.New(time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)),
		Verdict: v,
		IP:      &flowpb.IP{Source: "10.2.1.5", Destination: "10.1.1.11", IpVersion: flowpb.IPVersion_IPv4},
		L4:      &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 41000, DestinationPort: 8080}}},
		Source:  &flowpb.Endpoint{Identity: 132000}, Destination: &flowpb.Endpoint{ID: 7, Identity: 70001},
		TrafficDirection: flowpb.TrafficDirection_INGRESS,
		L7: &flowpb.Layer7{Type: typ, LatencyNs: uint64(latency), Record: &flowpb.Layer7_Http{Http: &flowpb.HTTP{
			Code: code, Method: "GET", Url: "http://checkout:8080/v1/cart", Protocol: "HTTP/1.1", Headers: headers}}},
	}
	if typ == flowpb.L7FlowType_RESPONSE {
		f.Source, f.Destination = f.Destination, f.Source
		f.IP.Source, f.IP.Destination = f.IP.Destination, f.IP.Source
		f.L4 = &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 8080, DestinationPort: 41000}}}
		f.IsReply = wrapperspb.Bool(true)
	}
	return f
}

func TestPublishL7EnrichesAndSummarises(t *testing.T) {
	h := NewHub(Config{Enricher: testEnricher{}, NodeName: "east/node-1"})
	s := h.Subscribe(last(0, true, nil))
	defer s.Close()
	h.PublishL7(proxyHTTP(flowpb.L7FlowType_REQUEST, flowpb.Verdict_FORWARDED, 0, 0,
		&flowpb.HTTPHeader{Key: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}))
	h.PublishL7(proxyHTTP(flowpb.L7FlowType_RESPONSE, flowpb.Verdict_FORWARDED, 200, 4913*time.Microsecond))
	h.PublishL7(proxyHTTP(flowpb.L7FlowType_REQUEST, flowpb.Verdict_DROPPED, 0, 0))
	evs := take(t, s, 3)
	req, resp, denied := evs[0].GetFlow(), evs[1].GetFlow(), evs[2].GetFlow()

	if req.GetType() != flowpb.FlowType_L7 || req.GetEventType().GetType() != eventAccessLog || req.GetNodeName() != "east/node-1" {
		t.Errorf("request flow: type %v, event %v, node %q; want L7, 129, east/node-1", req.GetType(), req.GetEventType(), req.GetNodeName())
	}
	src, dst := req.GetSource(), req.GetDestination()
	if src.GetClusterName() != "west" || src.GetPodName() != "frontend-1" || src.GetNamespace() != "web" {
		t.Errorf("request source: %v; want west's web/frontend-1 (cluster from the identity's range)", src)
	}
	if dst.GetClusterName() != "east" || dst.GetPodName() != "checkout-0" || dst.GetID() != 7 {
		t.Errorf("request destination: %v; want east's shop/checkout-0 with the proxy's endpoint id 7", dst)
	}
	if got := req.GetTraceContext().GetParent().GetTraceId(); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("trace id from traceparent: %q", got)
	}
	for _, tc := range []struct {
		f       *flowpb.Flow
		summary string
		compact string
	}{
		{req, "HTTP/1.1 GET http://checkout:8080/v1/cart",
			"west/web/frontend-1:41000 (ID:132000) -> east/shop/checkout-0:8080 (ID:70001) http-request FORWARDED (HTTP/1.1 GET http://checkout:8080/v1/cart)"},
		{resp, "HTTP/1.1 200 4ms (GET http://checkout:8080/v1/cart)",
			"west/web/frontend-1:41000 (ID:132000) <- east/shop/checkout-0:8080 (ID:70001) http-response FORWARDED (HTTP/1.1 200 took 4.91ms (GET http://checkout:8080/v1/cart))"},
		{denied, "HTTP/1.1 GET http://checkout:8080/v1/cart",
			"http-request DROPPED (HTTP/1.1 GET http://checkout:8080/v1/cart)"},
	} {
		//lint:ignore SA1019 Summary is what the hubble CLI prints
		if got := tc.f.GetSummary(); got != tc.summary {
			t.Errorf("summary %q, want Hubble's %q", got, tc.summary)
		}
		if got := Compact(tc.f); !strings.HasSuffix(got, tc.compact) {
			t.Errorf("compact:\n got %q\nwant …%q", got, tc.compact)
		}
	}
}

func TestDNSSummary(t *testing.T) {
	q := &flowpb.DNS{Query: "cart.shop.example.", Qtypes: []string{"A"}, ObservationSource: "proxy"}
	a := &flowpb.DNS{Query: "cart.shop.example.", Qtypes: []string{"A"}, ObservationSource: "proxy",
		Ips: []string{"10.1.1.11", "10.1.1.12"}, Ttl: 30, Cnames: []string{"checkout.shop.example."}}
	nx := &flowpb.DNS{Query: "nope.example.", Qtypes: []string{"AAAA"}, ObservationSource: "proxy", Rcode: 3}
	for _, tc := range []struct {
		typ  flowpb.L7FlowType
		d    *flowpb.DNS
		want string
	}{
		{flowpb.L7FlowType_REQUEST, q, "DNS Query cart.shop.example. A"},
		{flowpb.L7FlowType_RESPONSE, a, `DNS Answer "10.1.1.11,10.1.1.12" CNAMEs: "checkout.shop.example." TTL: 30 (Proxy cart.shop.example. A)`},
		{flowpb.L7FlowType_RESPONSE, nx, "DNS Answer RCode: Non-Existent Domain TTL: 0 (Proxy nope.example. AAAA)"},
	} {
		f := &flowpb.Flow{L7: &flowpb.Layer7{Type: tc.typ, Record: &flowpb.Layer7_Dns{Dns: tc.d}}}
		if got := l7Summary(f); got != tc.want {
			t.Errorf("summary %q, want %q", got, tc.want)
		}
		if got, want := l7Type(f.GetL7()), "dns-"+strings.ToLower(tc.typ.String())+" proxy"; got != want {
			t.Errorf("type %q, want %q", got, want)
		}
	}
}

// TestTraceIDFromHeaders: the trace id of a traceparent header, whatever
// the case of its name; none from a redacted value.
func TestTraceIDFromHeaders(t *testing.T) {
	id := "4bf92f3577b34da6a3ce929d0e0e4736"
	if got := traceID([]*flowpb.HTTPHeader{{Key: "X-Other", Value: "1"}, {Key: "Traceparent", Value: "00-" + id + "-00f067aa0ba902b7-01"}}); got != id {
		t.Errorf("traceID = %q, want %q", got, id)
	}
	if got := traceID([]*flowpb.HTTPHeader{{Key: "traceparent", Value: "HUBBLE_REDACTED"}}); got != "" {
		t.Errorf("a redacted traceparent gave %q", got)
	}
}

// namingEnricher is testEnricher with the DNS names of one address.
type namingEnricher struct{ testEnricher }

func (namingEnricher) DNSNames(a netip.Addr) []string {
	if a == netip.MustParseAddr("203.0.113.7") {
		return []string{"api.example.com."}
	}
	return nil
}

// TestDNSNames: a peer of the world or of a node-local identity is named
// by the DNS names the agent's FQDN cache holds for it; a pod is not
// looked up.
func TestDNSNames(t *testing.T) {
	x := newEnricher(namingEnricher{}, "east/node-1", 0)
	out := dpFlow("10.1.1.11:40000", 70001, 1, "203.0.113.7:443", 2, 0, flows.VerdictForwarded)
	out.Direction = datapath.Egress
	f := x.flow(out)
	if got := f.GetDestinationNames(); len(got) != 1 || got[0] != "api.example.com." || f.GetSourceNames() != nil {
		t.Errorf("names: source %v destination %v; want the destination api.example.com.", f.GetSourceNames(), got)
	}
	local := dpFlow("10.1.1.11:40000", 70001, 1, "203.0.113.7:443", 1<<24|5, 0, flows.VerdictForwarded)
	if got := x.flow(local).GetDestinationNames(); len(got) != 1 {
		t.Errorf("a node-local (FQDN) identity's address: names %v", got)
	}
	pod := dpFlow("10.1.1.11:40000", 70001, 1, "203.0.113.7:443", 132000, 2, flows.VerdictForwarded)
	if got := x.flow(pod).GetDestinationNames(); got != nil {
		t.Errorf("a pod identity's address was looked up: %v", got)
	}
}
