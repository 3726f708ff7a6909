package l7http

import (
	"net/textproto"
	"slices"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/clustermesh/clustermesh/internal/traceparent"
)

// redacted is Hubble's value for a redacted header
// (pkg/hubble/defaults.SensitiveValueRedacted).
const redacted = "HUBBLE_REDACTED"

// accessLogType is Cilium's MessageTypeAccessLog, the event type of L7 flows.
const accessLogType = 129

// baseFlow is the flow of one L7 record of the connection: the client as
// source and the original server as destination, swapped for a reply.
func (c *conn) baseFlow(now time.Time, verdict flowpb.Verdict, reply bool) *flowpb.Flow {
	m := &c.meta
	src, dst := m.Source, m.Destination
	srcID, dstID := m.SourceIdentity, m.DestinationIdentity
	srcEP, dstEP := &flowpb.Endpoint{Identity: srcID}, &flowpb.Endpoint{Identity: dstID}
	dir := flowpb.TrafficDirection_TRAFFIC_DIRECTION_UNKNOWN
	switch m.Direction {
	case Ingress:
		dstEP.ID, dir = m.EndpointID, flowpb.TrafficDirection_INGRESS
	case Egress:
		srcEP.ID, dir = m.EndpointID, flowpb.TrafficDirection_EGRESS
	}
	if reply {
		src, dst, srcEP, dstEP = dst, src, dstEP, srcEP
	}
	ipv := flowpb.IPVersion_IPv4
	if src.Addr().Is6() && !src.Addr().Is4In6() {
		ipv = flowpb.IPVersion_IPv6
	}
	return &flowpb.Flow{
		Time:             timestamppb.New(now),
		Verdict:          verdict,
		Type:             flowpb.FlowType_L7,
		EventType:        &flowpb.CiliumEventType{Type: accessLogType},
		IP:               &flowpb.IP{Source: src.Addr().Unmap().String(), Destination: dst.Addr().Unmap().String(), IpVersion: ipv},
		L4:               &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: uint32(src.Port()), DestinationPort: uint32(dst.Port())}}},
		Source:           srcEP,
		Destination:      dstEP,
		TrafficDirection: dir,
		IsReply:          wrapperspb.Bool(reply),
	}
}

// requestFlow is the REQUEST record of req (possibly partly parsed).
func (c *conn) requestFlow(req *requestHead, verdict flowpb.Verdict) *flowpb.Flow {
	f := c.baseFlow(time.Now(), verdict, false)
	f.L7 = &flowpb.Layer7{Type: flowpb.L7FlowType_REQUEST, Record: &flowpb.Layer7_Http{Http: &flowpb.HTTP{
		Method: req.method, Url: c.url(req), Protocol: protoOr(req.proto), Headers: c.flowHeaders(req.headers),
	}}}
	f.TraceContext = traceContext(req)
	return f
}

// traceContext is the request's W3C trace context (its traceparent
// header), read before the header values are redacted, as Hubble puts it
// on the request's and the response's flows; nil without one.
func traceContext(req *requestHead) *flowpb.TraceContext {
	for _, h := range req.headers {
		if equalFoldASCII(h.name, traceparent.Header) {
			if id := traceparent.TraceID(h.value); id != "" {
				return &flowpb.TraceContext{Parent: &flowpb.TraceParent{TraceId: id}}
			}
			return nil
		}
	}
	return nil
}

// responseFlow is the RESPONSE record of req's response, code and headers
// (resp nil for a response the proxy made).
func (c *conn) responseFlow(req *requestHead, code int, resp *responseHead, verdict flowpb.Verdict, latency time.Duration) *flowpb.Flow {
	f := c.baseFlow(time.Now(), verdict, true)
	h := &flowpb.HTTP{Code: uint32(code), Method: req.method, Url: c.url(req), Protocol: protoOr(req.proto)}
	if resp != nil {
		h.Protocol, h.Headers = resp.proto, c.flowHeaders(resp.headers)
	}
	f.L7 = &flowpb.Layer7{Type: flowpb.L7FlowType_RESPONSE, LatencyNs: uint64(latency), Record: &flowpb.Layer7_Http{Http: h}}
	f.TraceContext = traceContext(req)
	return f
}

func protoOr(p string) string {
	if p == "" {
		return "HTTP/1.1"
	}
	return p
}

// url is the request's URL as Hubble shows it: http://host/target, the
// original destination standing for a missing Host.
func (c *conn) url(req *requestHead) string {
	if req.target == "" {
		return ""
	}
	host := req.host
	if host == "" {
		host = c.meta.Destination.String()
	}
	if req.target == "*" {
		return "http://" + host
	}
	return "http://" + host + req.target
}

// flowHeaders are the fields sorted by canonical name (as Hubble sorts
// them), values redacted unless KeepHeaderValues.
func (c *conn) flowHeaders(hs []header) []*flowpb.HTTPHeader {
	if len(hs) == 0 {
		return nil
	}
	out := make([]*flowpb.HTTPHeader, 0, len(hs))
	for _, h := range hs {
		v := redacted
		if c.p.cfg.KeepHeaderValues {
			v = h.value
		}
		out = append(out, &flowpb.HTTPHeader{Key: textproto.CanonicalMIMEHeaderKey(h.name), Value: v})
	}
	slices.SortStableFunc(out, func(a, b *flowpb.HTTPHeader) int { return strings.Compare(a.Key, b.Key) })
	return out
}
