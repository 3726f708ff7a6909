package flows

// Binary layout of what the policy programs report (bpf/policy.c of
// package datapath/tcpolicy, which creates these maps; bpf/policy.c asserts
// the event's offsets at compile time, the events carrying no BTF).
// Native-endian except ports (network byte order); IPv4 addresses in the
// first 4 bytes of 16.
//
//	/* cm_policy_flows: BPF_MAP_TYPE_RINGBUF of tcpolicy.Config.FlowRingBytes
//	 * (default 4 MiB), records of: */
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
//		__u16 pad; __u32 pad2;
//	};
//
//	/* cm_policy_metrics: BPF_MAP_TYPE_PERCPU_ARRAY of __u64, 16 counters
//	 * (counter*; the rest reserved). */

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
)

// eventSize is the size of struct cm_flow_event.
const eventSize = 80

// Flow event flags.
const (
	flowReply    = 1
	flowNew      = 2
	flowSampled  = 4
	flowFragment = 8
)

// decode decodes a struct cm_flow_event; ok is false when b is short.
// monoToWall converts the event's CLOCK_MONOTONIC timestamp.
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
	return f, true
}
