package observe

import (
	"fmt"
	"net/netip"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/clustermesh/clustermesh/internal/traceparent"
	"github.com/clustermesh/clustermesh/wire"
)

// eventAccessLog is Cilium's MessageTypeAccessLog, the event type of L7
// flows.
const eventAccessLog = 129

// PublishL7 enriches an L7 flow reported by the agent's proxy and
// publishes it. The proxy fills what it saw (Hubble's L7 record, the
// verdict, the client's and the server's addresses and ports, and their
// security identities, a response as a reply with its ends swapped); the
// hub names the ends (cluster, namespace, pod, labels, workload, service)
// as it does for the datapath's flows, and writes Hubble's summary. fl
// must not be used by the caller afterwards. Safe for concurrent use.
func (h *Hub) PublishL7(fl *flowpb.Flow) {
	if fl == nil || fl.GetL7() == nil {
		return
	}
	h.enr.l7(fl)
	h.Publish(fl)
}

// l7 fills an L7 flow of the proxy in place.
func (x *enricher) l7(f *flowpb.Flow) {
	f.NodeName = x.node
	f.Type = flowpb.FlowType_L7
	if f.GetEventType() == nil {
		f.EventType = &flowpb.CiliumEventType{Type: eventAccessLog}
	}
	if f.GetIsReply() == nil {
		f.IsReply = wrapperspb.Bool(false)
	}
	reply := f.GetIsReply().GetValue()
	fillDeprecated(f, reply)
	src, _ := netip.ParseAddr(f.GetIP().GetSource())
	dst, _ := netip.ParseAddr(f.GetIP().GetDestination())
	f.Source = x.l7Endpoint(f.GetSource(), src)
	f.Destination = x.l7Endpoint(f.GetDestination(), dst)
	if f.SourceNames == nil { // the proxy's own, when it knows them
		f.SourceNames = x.dnsNames(src, f.Source.GetIdentity())
	}
	if f.DestinationNames == nil {
		f.DestinationNames = x.dnsNames(dst, f.Destination.GetIdentity())
	}
	// The server's end names the service the client asked for, when the
	// proxy saw its frontend (a ClusterIP not yet translated).
	server, port := dst, destinationPort(f)
	if reply {
		server, port = src, sourcePort(f)
	}
	if x.e != nil && server.IsValid() {
		if ns, name, ok := x.e.Service(netip.AddrPortFrom(server.Unmap(), uint16(port))); ok {
			svc := &flowpb.Service{Namespace: ns, Name: name}
			if reply {
				f.SourceService = svc
			} else {
				f.DestinationService = svc
			}
		}
	}
	if f.GetTraceContext() == nil {
		if id := traceID(f.GetL7().GetHttp().GetHeaders()); id != "" {
			f.TraceContext = &flowpb.TraceContext{Parent: &flowpb.TraceParent{TraceId: id}}
		}
	}
	setL7Summary(f)
}

// l7Endpoint names an end of an L7 flow from its address and the identity
// the proxy gave, keeping the endpoint id the proxy set.
func (x *enricher) l7Endpoint(given *flowpb.Endpoint, addr netip.Addr) *flowpb.Endpoint {
	id := given.GetIdentity()
	ep := x.endpoint(addr, id, x.clusterOf(id))
	ep.ID = given.GetID()
	return ep
}

// clusterOf is the cluster id whose range holds identity id: 0 for the
// reserved identities and the node-local ones (CIDR and FQDN identities,
// 1<<24 and above).
func (x *enricher) clusterOf(id uint32) uint16 {
	if id < 1<<16 || id >= 1<<24 {
		return 0
	}
	shift := 16
	if x.maxClusters == wire.ExtendedMaxConnectedClusters {
		shift = 15
	}
	return uint16(id >> shift)
}

// traceID is the trace id of the traceparent header among headers, ""
// when there is none or it is malformed (redacted, for one).
func traceID(headers []*flowpb.HTTPHeader) string {
	for _, h := range headers {
		if strings.EqualFold(h.GetKey(), traceparent.Header) {
			return traceparent.TraceID(h.GetValue())
		}
	}
	return ""
}

// setL7Summary writes Hubble's summary of an L7 flow (cilium v1.20.2,
// pkg/hubble/parser/seven): "HTTP/1.1 GET http://shop/v1/cart" for a
// request, "HTTP/1.1 200 4ms (GET http://shop/v1/cart)" for a response,
// "DNS Query cart.shop. A" and "DNS Answer "10.0.0.1" TTL: 30 (Proxy
// cart.shop. A)" for DNS.
//
//lint:ignore SA1019 filled as Hubble fills it, for clients that read it
func setL7Summary(f *flowpb.Flow) { f.Summary = l7Summary(f) }

func l7Summary(f *flowpb.Flow) string {
	l7 := f.GetL7()
	switch {
	case l7.GetHttp() != nil:
		h := l7.GetHttp()
		req := h.GetMethod() + " " + h.GetUrl()
		if l7.GetType() == flowpb.L7FlowType_RESPONSE {
			return fmt.Sprintf("%s %d %dms (%s)", h.GetProtocol(), h.GetCode(), l7.GetLatencyNs()/1e6, req)
		}
		return h.GetProtocol() + " " + req
	case l7.GetDns() != nil:
		return dnsSummary(l7.GetType(), l7.GetDns())
	}
	return ""
}

func dnsSummary(typ flowpb.L7FlowType, d *flowpb.DNS) string {
	qtypes := strings.Join(d.GetQtypes(), ",")
	if typ != flowpb.L7FlowType_RESPONSE {
		return fmt.Sprintf("DNS Query %s %s", d.GetQuery(), qtypes)
	}
	var answer string
	if d.GetRcode() != 0 {
		answer = "RCode: " + dnsRcode(d.GetRcode())
	} else {
		var parts []string
		if len(d.GetIps()) > 0 {
			parts = append(parts, fmt.Sprintf("%q", strings.Join(d.GetIps(), ",")))
		}
		if len(d.GetCnames()) > 0 {
			parts = append(parts, fmt.Sprintf("CNAMEs: %q", strings.Join(d.GetCnames(), ",")))
		}
		answer = strings.Join(parts, " ")
	}
	source := "Query"
	if d.GetObservationSource() == "proxy" {
		source = "Proxy"
	}
	return fmt.Sprintf("DNS Answer %s TTL: %d (%s %s %s)", answer, d.GetTtl(), source, d.GetQuery(), qtypes)
}

// dnsRcodes name DNS response codes as gopacket's layers.DNSResponseCode
// does, which Hubble's summary prints.
var dnsRcodes = map[uint32]string{0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain",
	4: "Not Implemented", 5: "Query Refused", 6: "Name Exists when it should not",
	7: "RR Set Exists when it should not", 8: "RR Set that should exist does not",
	9: "Server Not Authoritative for zone", 10: "Name not contained in zone", 16: "Bad OPT Version",
	17: "Key not recognized", 18: "Signature out of time window", 19: "Bad TKEY Mode", 20: "Duplicate key name",
	21: "Algorithm not supported", 22: "Bad Truncation", 23: "Bad Cookie"}

func dnsRcode(rc uint32) string {
	if n, ok := dnsRcodes[rc]; ok {
		return n
	}
	return "Unknown"
}
