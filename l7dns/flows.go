package l7dns

import (
	"net/netip"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/miekg/dns"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// observationSource is l7.dns.observation_source of the proxy's flows, as
// Cilium's DNS proxy writes it.
const observationSource = "proxy"

// accessLogEventType is Cilium's MessageTypeAccessLog, the event type of
// L7 flows.
const accessLogEventType = 129

type l4 uint8

const (
	udp l4 = iota
	tcp
)

// queryRecord is a query's l7.dns.
func queryRecord(q *dns.Msg) *flowpb.DNS {
	qt := q.Question[0].Qtype
	return &flowpb.DNS{Query: q.Question[0].Name, Qtypes: []string{dns.Type(qt).String()},
		ObservationSource: observationSource}
}

// emit hands one L7 flow to Config.Flows: a query from the client, or an
// answer to it (IsReply, source and destination swapped as Hubble does).
func (p *Proxy) emit(meta Meta, proto l4, isReply bool, v flowpb.Verdict, rec *flowpb.DNS, latency time.Duration) {
	if p.cfg.Flows == nil {
		return
	}
	src, dst := meta.Source, meta.Destination
	srcEP := &flowpb.Endpoint{Identity: meta.SourceIdentity}
	dstEP := &flowpb.Endpoint{Identity: meta.DestinationIdentity}
	if meta.Direction == flowpb.TrafficDirection_EGRESS {
		srcEP.ID = meta.EndpointID
	} else if meta.Direction == flowpb.TrafficDirection_INGRESS {
		dstEP.ID = meta.EndpointID
	}
	typ := flowpb.L7FlowType_REQUEST
	if isReply {
		src, dst, srcEP, dstEP = dst, src, dstEP, srcEP
		typ = flowpb.L7FlowType_RESPONSE
	}
	f := &flowpb.Flow{
		Time:             timestamppb.Now(),
		Verdict:          v,
		Type:             flowpb.FlowType_L7,
		EventType:        &flowpb.CiliumEventType{Type: accessLogEventType},
		IP:               ipOf(src.Addr(), dst.Addr()),
		L4:               l4Of(proto, src.Port(), dst.Port()),
		Source:           srcEP,
		Destination:      dstEP,
		TrafficDirection: meta.Direction,
		IsReply:          wrapperspb.Bool(isReply),
		L7: &flowpb.Layer7{Type: typ, LatencyNs: uint64(latency.Nanoseconds()),
			Record: &flowpb.Layer7_Dns{Dns: rec}},
	}
	p.cfg.Flows(f)
}

func ipOf(src, dst netip.Addr) *flowpb.IP {
	src, dst = src.Unmap(), dst.Unmap()
	v := flowpb.IPVersion_IPv4
	if src.Is6() {
		v = flowpb.IPVersion_IPv6
	}
	return &flowpb.IP{Source: src.String(), Destination: dst.String(), IpVersion: v}
}

func l4Of(proto l4, sport, dport uint16) *flowpb.Layer4 {
	if proto == tcp {
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: uint32(sport), DestinationPort: uint32(dport)}}}
	}
	return &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: uint32(sport), DestinationPort: uint32(dport)}}}
}
