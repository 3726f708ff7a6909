package flows

// Binary layout of what the programs report: the policy programs
// (bpf/policy.c of package datapath/tcpolicy) and the socket load balancer
// (bpf/socklb.c of package datapath/socklb), which create these maps and
// assert the event's offsets at compile time (the events carry no BTF).
// Native-endian except ports (network byte order); IPv4 addresses in the
// first 4 bytes of 16.
//
//	/* cm_policy_flows: BPF_MAP_TYPE_RINGBUF of tcpolicy.Config.FlowRingBytes
//	 * (default 4 MiB), records of struct cm_flow_event;
//	 * cm_sock_events: BPF_MAP_TYPE_RINGBUF of socklb.Config.EventRingBytes
//	 * (default 1 MiB), records of struct cm_sock_event. */
//	struct cm_flow_event {           /* 80 bytes */
//		__u64 timestamp;             /* CLOCK_MONOTONIC ns */
//		__u8  src_addr[16], dst_addr[16];
//		__u32 src_identity, dst_identity;
//		__u32 ifindex;               /* host-side interface */
//		__u32 len;                   /* packet length */
//		__u32 sample_rate;           /* the rate when it was reported */
//		__be16 src_port, dst_port;
//		__u16 src_cluster, dst_cluster;
//		__u8  family, proto, verdict, reason, direction, flags;
//		__u8  kind;                  /* Kind; 0 (an older program): by verdict */
//		__u8  tcp_flags;             /* TCPFlags */
//		__u8  match_type;            /* MatchType (policy verdicts) */
//		__u8  xlate_point;           /* XlatePoint (socket translations) */
//		__u16 proxy_port;            /* the L7 proxy's (flag 16), host order */
//	};
//	struct cm_sock_event {           /* 128 bytes, kind 7 */
//		struct cm_flow_event flow;   /* src: the bound source (or zero),
//		                              * dst: the backend, as the socket sees
//		                              * them (an IPv6 socket's IPv4 peers
//		                              * v4-mapped); dst_cluster: the
//		                              * backend's */
//		__u64 sock_cookie;           /* bpf_get_socket_cookie */
//		__u64 netns_cookie;          /* bpf_get_netns_cookie */
//		__u64 cgroup_id;             /* bpf_get_current_cgroup_id */
//		__u8  service_addr[16];      /* the frontend, as the socket gave it */
//		__be16 service_port;
//		__u8  pad[6];
//	};
//
//	/* cm_policy_metrics, cm_sock_metrics: BPF_MAP_TYPE_PERCPU_ARRAY of
//	 * __u64, 16 counters (counter*; slots 6 and 7, events written and
//	 * lost, are the same in both; the rest is each program's own). */

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Indexes of cm_policy_metrics.
const (
	counterForwardedIngress = iota
	counterForwardedEgress
	counterDroppedPolicyIngress
	counterDroppedPolicyEgress
	counterDroppedInvalidIngress
	counterDroppedInvalidEgress
	counterEvents
	counterEventsLost
	counterCTCreated
	counterAuditedIngress
	counterAuditedEgress
	counterDroppedProxyIngress
	counterDroppedProxyEgress
	counterRedirectedIngress
	counterRedirectedEgress
)

// eventSize is the size of struct cm_flow_event, sockEventSize of struct
// cm_sock_event.
const (
	eventSize     = 80
	sockEventSize = 128
)

// Flow event flags.
const (
	flowReply    = 1
	flowNew      = 2
	flowSampled  = 4
	flowFragment = 8
	flowProxy    = 16
)

// decode decodes a struct cm_flow_event or cm_sock_event; ok is false
// when b is short for its kind. monoToWall converts the event's
// CLOCK_MONOTONIC timestamp.
func decode(b []byte, monoToWall func(uint64) time.Time) (f Flow, ok bool) {
	if len(b) < eventSize {
		return Flow{}, false
	}
	ne := binary.NativeEndian
	family := b[68]
	src := bpfmap.DecodeAddr([16]byte(b[8:24]), family)
	dst := bpfmap.DecodeAddr([16]byte(b[24:40]), family)
	f = Flow{
		Time:        monoToWall(ne.Uint64(b[0:8])),
		SrcIdentity: ne.Uint32(b[40:44]),
		DstIdentity: ne.Uint32(b[44:48]),
		Ifindex:     int(ne.Uint32(b[48:52])),
		Bytes:       ne.Uint32(b[52:56]),
		SampleRate:  ne.Uint32(b[56:60]),
		SrcCluster:  ne.Uint16(b[64:66]),
		DstCluster:  ne.Uint16(b[66:68]),
		Protocol:    datapath.Protocol(b[69]),
		Verdict:     Verdict(b[70]),
		DropReason:  DropReason(b[71]),
		Direction:   datapath.Direction(b[72]),
	}
	f.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[60:62]))
	f.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(b[62:64]))
	flags := b[73]
	f.Reply = flags&flowReply != 0
	f.New = flags&flowNew != 0
	f.Sampled = flags&flowSampled != 0
	f.Fragment = flags&flowFragment != 0
	if flags&flowProxy != 0 {
		f.ProxyPort = ne.Uint16(b[78:80])
	}
	f.Kind, f.TCPFlags, f.MatchType, f.XlatePoint = Kind(b[74]), TCPFlags(b[75]), MatchType(b[76]), XlatePoint(b[77])
	switch {
	case f.Kind == 0 && f.Verdict == VerdictDropped:
		f.Kind = KindDrop
	case f.Kind == 0:
		f.Kind = KindTrace
	case f.Kind == KindSockTranslate:
		return decodeSock(b, f)
	}
	return f, true
}

// decodeSock decodes the rest of a struct cm_sock_event.
func decodeSock(b []byte, f Flow) (Flow, bool) {
	if len(b) < sockEventSize {
		return Flow{}, false
	}
	ne := binary.NativeEndian
	f.SocketCookie = ne.Uint64(b[80:88])
	f.NetnsCookie = ne.Uint64(b[88:96])
	f.CgroupID = ne.Uint64(b[96:104])
	svc := bpfmap.DecodeAddr([16]byte(b[104:120]), b[68])
	f.Service = unmap(netip.AddrPortFrom(svc, binary.BigEndian.Uint16(b[120:122])))
	f.Dst = unmap(f.Dst)
	if f.Src = unmap(f.Src); f.Src.Addr().IsUnspecified() {
		f.Src = netip.AddrPort{}
	}
	return f, true
}

// unmap reports a v4-mapped address as IPv4.
func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
