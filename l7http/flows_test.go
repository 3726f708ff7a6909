package l7http

import (
	"net/http"
	"net/netip"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// TestFlowFields: a request and its response as Hubble's L7 flows: types,
// verdicts, endpoints and identities (swapped for the reply), ports,
// direction, URL, protocol, code, the latency (the server answers only
// once the test has seen the request's flow: the response's latency lies
// between that and the client's round trip), header values redacted by
// default.
func TestFlowFields(t *testing.T) {
	for _, keep := range []bool{false, true} {
		release := make(chan struct{})
		var released time.Time
		handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-release
			w.Header().Set("X-Secret", "s3cr3t")
			w.Write([]byte("ok"))
		})
		h := newHarness(t, Config{KeepHeaderValues: keep}, nil, handler)
		c := h.dialRaw()
		sent := time.Now()
		c.send(t, "GET /v1/cart?id=1 HTTP/1.1\r\nHost: checkout:8080\r\nAuthorization: Bearer xyz\r\n\r\n")
		h.waitFlows(1) // the request's, before the server answers
		released = time.Now()
		close(release)
		c.response(t, "GET")
		roundTrip := time.Since(sent)
		fs := h.waitFlows(2)
		req, resp := fs[0], fs[1]
		client := netip.MustParseAddrPort(c.LocalAddr().String())
		server := h.meta.Destination

		checkBase := func(f *flowpb.Flow, src, dst netip.AddrPort, srcID, dstID uint32, reply bool) {
			t.Helper()
			if f.GetType() != flowpb.FlowType_L7 || f.GetEventType().GetType() != 129 || f.GetVerdict() != flowpb.Verdict_FORWARDED ||
				f.GetTrafficDirection() != flowpb.TrafficDirection_INGRESS || f.GetIsReply().GetValue() != reply || f.GetTime() == nil {
				t.Fatalf("flow %v", f)
			}
			if f.GetIP().GetSource() != src.Addr().String() || f.GetIP().GetDestination() != dst.Addr().String() || f.GetIP().GetIpVersion() != flowpb.IPVersion_IPv4 {
				t.Fatalf("ip %v, want %v -> %v", f.GetIP(), src, dst)
			}
			if tcp := f.GetL4().GetTCP(); tcp.GetSourcePort() != uint32(src.Port()) || tcp.GetDestinationPort() != uint32(dst.Port()) {
				t.Fatalf("l4 %v, want %v -> %v", f.GetL4(), src, dst)
			}
			if f.GetSource().GetIdentity() != srcID || f.GetDestination().GetIdentity() != dstID {
				t.Fatalf("identities %v -> %v", f.GetSource(), f.GetDestination())
			}
		}
		checkBase(req, client, server, 70001, 70002, false)
		checkBase(resp, server, client, 70002, 70001, true)
		if req.GetDestination().GetID() != 42 || resp.GetSource().GetID() != 42 {
			t.Fatalf("the local endpoint's ID: %v, %v", req.GetDestination(), resp.GetSource())
		}
		rh, ph := req.GetL7().GetHttp(), resp.GetL7().GetHttp()
		if req.GetL7().GetType() != flowpb.L7FlowType_REQUEST || rh.GetMethod() != "GET" || rh.GetUrl() != "http://checkout:8080/v1/cart?id=1" || rh.GetProtocol() != "HTTP/1.1" || rh.GetCode() != 0 {
			t.Fatalf("request record %v", req.GetL7())
		}
		if resp.GetL7().GetType() != flowpb.L7FlowType_RESPONSE || ph.GetCode() != 200 || ph.GetMethod() != "GET" || ph.GetUrl() != rh.GetUrl() {
			t.Fatalf("response record %v", resp.GetL7())
		}
		// From the request's first byte (before its flow) to the response's
		// header (after the release, before the client had it).
		if lat := time.Duration(resp.GetL7().GetLatencyNs()); lat < released.Sub(req.GetTime().AsTime()) || lat > roundTrip {
			t.Fatalf("latency %v, want between %v (request flow → release) and the client's round trip %v",
				lat, released.Sub(req.GetTime().AsTime()), roundTrip)
		}
		values := map[string]string{}
		for _, hd := range append(rh.GetHeaders(), ph.GetHeaders()...) {
			values[hd.GetKey()] = hd.GetValue()
		}
		wantAuth, wantSecret := "HUBBLE_REDACTED", "HUBBLE_REDACTED"
		if keep {
			wantAuth, wantSecret = "Bearer xyz", "s3cr3t"
		}
		if values["Authorization"] != wantAuth || values["X-Secret"] != wantSecret || values["Host"] == "" {
			t.Fatalf("keep values %v: headers %v", keep, values)
		}
	}
}

// TestFlowIPv6AndEgress: an IPv6 connection of an egress redirect (the
// local endpoint is the client).
func TestFlowIPv6AndEgress(t *testing.T) {
	p, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	c := &conn{p: p, meta: Meta{
		Source: netip.MustParseAddrPort("[fd00::1]:40000"), Destination: netip.MustParseAddrPort("[fd00::2]:80"),
		SourceIdentity: 1, DestinationIdentity: 2, EndpointID: 7, Direction: Egress,
	}}
	req := &requestHead{method: "GET", target: "/", proto: "HTTP/1.1"}
	f := c.requestFlow(req, flowpb.Verdict_FORWARDED)
	if f.GetIP().GetIpVersion() != flowpb.IPVersion_IPv6 || f.GetIP().GetSource() != "fd00::1" || f.GetTrafficDirection() != flowpb.TrafficDirection_EGRESS ||
		f.GetSource().GetID() != 7 || f.GetDestination().GetID() != 0 || f.GetL7().GetHttp().GetUrl() != "http://[fd00::2]:80/" {
		t.Fatalf("flow %v", f)
	}
	r := c.responseFlow(req, 200, nil, flowpb.Verdict_FORWARDED, time.Millisecond)
	if r.GetIP().GetSource() != "fd00::2" || r.GetDestination().GetID() != 7 || r.GetL4().GetTCP().GetSourcePort() != 80 || r.GetL7().GetLatencyNs() != uint64(time.Millisecond) {
		t.Fatalf("reply %v", r)
	}
}

// TestFlowTraceContext: the request's traceparent gives both its flows a
// trace id (the HTTP metrics' exemplars), though header values are
// redacted in the flow.
func TestFlowTraceContext(t *testing.T) {
	p, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	c := &conn{p: p, meta: Meta{Source: netip.MustParseAddrPort("10.0.0.1:40000"), Destination: netip.MustParseAddrPort("10.0.0.2:80"), Direction: Ingress}}
	id := "4bf92f3577b34da6a3ce929d0e0e4736"
	req := &requestHead{method: "GET", target: "/", proto: "HTTP/1.1", headers: []header{{"TraceParent", "00-" + id + "-00f067aa0ba902b7-01"}}}
	for _, f := range []*flowpb.Flow{c.requestFlow(req, flowpb.Verdict_FORWARDED), c.responseFlow(req, 200, nil, flowpb.Verdict_FORWARDED, time.Millisecond)} {
		if got := f.GetTraceContext().GetParent().GetTraceId(); got != id {
			t.Errorf("%v flow trace id %q, want %q", f.GetL7().GetType(), got, id)
		}
		if v := f.GetL7().GetHttp().GetHeaders(); len(v) > 0 && v[0].GetValue() != redacted {
			t.Errorf("header value in the flow: %q", v[0].GetValue())
		}
	}
	plain := &requestHead{method: "GET", target: "/", proto: "HTTP/1.1"}
	if tc := c.requestFlow(plain, flowpb.Verdict_FORWARDED).GetTraceContext(); tc != nil {
		t.Errorf("a request without traceparent has trace context %v", tc)
	}
}
