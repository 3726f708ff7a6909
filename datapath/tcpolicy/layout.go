package tcpolicy

// Binary layout of the policy maps (bpf/policy.c, docs/datapath-policy.md),
// pinned beside the mesh maps of package datapath (datapath/layout.go),
// whose cm_ipcache the programs read. Native-endian except ports (network
// byte order); no implicit padding; IPv4 addresses in the first 4 bytes of
// 16.
//
//	/* cm_policy: BPF_MAP_TYPE_LPM_TRIE, BPF_F_NO_PREALLOC, max_entries =
//	 * Config.MaxPolicy (default 262144). An entry's prefix always covers
//	 * endpoint, peer and direction (72 bits); 80 adds the protocol and
//	 * 80 + n the first n bits of the port: 72 any protocol and port, 80 one
//	 * protocol any port, 96 one port, 80 + n an aligned block of 2^(16-n)
//	 * ports (a range is split into at most 30 such blocks). */
//	struct cm_policy_key {           /* 16 bytes */
//		__u32 prefixlen;
//		__u32 endpoint;              /* local identity */
//		__u32 peer;                  /* peer identity; 0: any peer */
//		__u8  direction;             /* 0 ingress, 1 egress (of the endpoint) */
//		__u8  proto;                 /* IPPROTO_*; 0 in entries of prefix 72 */
//		__be16 port;                 /* destination port, network byte order */
//	};
//	struct cm_policy_value {         /* 4 bytes */
//		__u8  match_type;            /* Cilium's POLICY_MATCH_* of the entry,
//		                              * reported in policy-verdict events:
//		                              * peer 0 ("any") 72 all, 80 proto-only,
//		                              * more L4-only; another peer 72 L3-only,
//		                              * 80 L3-proto, more L3-L4 */
//		__u8  pad;
//		__u16 proxy_port;            /* the L7 proxy's listener, host order;
//		                              * 0: none (Key.ProxyPort; the lowest of
//		                              * the keys that share the entry) */
//	};
//
//	/* cm_policy_endpoints: BPF_MAP_TYPE_HASH, key __u32 ifindex of the
//	 * host-side interface, max_entries = Config.MaxPolicyEndpoints (default 16384). */
//	struct cm_policy_endpoint {      /* 8 bytes */
//		__u32 identity;
//		__u8  flags;                 /* 1 enforce ingress, 2 enforce egress,
//		                              * 4 audit (denied packets pass, reported
//		                              * as AUDIT) */
//		__u8  pad[3];
//	};
//
//	/* cm_policy_config: BPF_MAP_TYPE_ARRAY, 1 entry. */
//	struct cm_policy_config {        /* 16 bytes */
//		__u32 sample_rate;           /* 1 in N forwarded packets reported; 0 none */
//		__u16 cluster_id;            /* local cluster, reported for endpoints */
//		__u16 flags;                 /* 1 report every new flow, 2 cm_policy has
//		                              * entries for peer 0, 4 strict (no cached
//		                              * verdicts), 8 policy-verdict events */
//		__u32 policy_rev;            /* verdicts cached at another revision
//		                              * are checked again */
//		__u32 pad;
//	};
//
//	/* cm_policy_ct: BPF_MAP_TYPE_LRU_HASH, max_entries = Config.MaxPolicyCT
//	 * (default 131072). Written only by the programs. */
//	struct cm_ct_key {               /* 44 bytes */
//		__u8  local[16];             /* the endpoint's address */
//		__u8  remote[16];            /* the peer's */
//		__be16 lport, rport;
//		__u8  proto, family;
//		__u16 pad;
//		__u32 ifindex;
//	};
//	struct cm_ct_value {             /* 24 bytes */
//		__u64 last_seen;             /* bpf_ktime_get_coarse_ns */
//		__u32 peer_identity;         /* as resolved when last checked */
//		__u32 rev;                   /* policy_rev of the cached verdict */
//		__u16 peer_cluster;
//		__u8  origin;                /* direction of the first packet */
//		__u8  flags;                 /* 1 closing (FIN or RST seen), 2 verdict
//		                              * cached, 4 allowed by audit mode only */
//		__u16 proxy_port;            /* of the cached verdict: to the L7 proxy */
//		__u16 pad;
//	};
//
//	/* cm_policy_metrics: BPF_MAP_TYPE_PERCPU_ARRAY of __u64, 16 counters,
//	 * and cm_policy_flows: BPF_MAP_TYPE_RINGBUF of Config.FlowRingBytes
//	 * (default 4 MiB) of struct cm_flow_event: written by the programs, read
//	 * by package datapath/flows (its layout.go). */

import "github.com/clustermesh/clustermesh/datapath/flows"

// Prefix lengths of cm_policy entries.
const (
	policyPrefixFixed = 72 // endpoint, peer, direction
	policyPrefixProto = 80 // + protocol
	policyPrefixFull  = 96 // + port
)

// Endpoint flags.
const (
	epEnforceIngress uint8 = 1
	epEnforceEgress  uint8 = 2
	epAudit          uint8 = 4
)

// Global flags.
const (
	cfgTraceNew   uint16 = 1
	cfgHasAnyPeer uint16 = 2
	cfgStrict     uint16 = 4
	cfgVerdicts   uint16 = 8
)

// policyKey is struct cm_policy_key.
type policyKey struct {
	PrefixLen uint32
	Endpoint  uint32
	Peer      uint32
	Direction uint8
	Proto     uint8
	Port      uint16 // network byte order
}

// policyValue is struct cm_policy_value.
type policyValue struct {
	MatchType uint8 // flows.MatchType
	Pad       uint8
	ProxyPort uint16 // host order; 0: none
}

// value is the value of trie entry e without a proxy port: the kind of
// match it stands for, as Cilium's bpf/lib/policy.h names it from the
// matched prefix.
func (e policyKey) value() policyValue {
	var m flows.MatchType
	switch {
	case e.PrefixLen <= policyPrefixFixed && e.Peer == AnyPeer:
		m = flows.MatchAll
	case e.PrefixLen <= policyPrefixFixed:
		m = flows.MatchL3Only
	case e.PrefixLen <= policyPrefixProto && e.Peer == AnyPeer:
		m = flows.MatchProtoOnly
	case e.PrefixLen <= policyPrefixProto:
		m = flows.MatchL3Proto
	case e.Peer == AnyPeer:
		m = flows.MatchL4Only
	default:
		m = flows.MatchL3L4
	}
	return policyValue{MatchType: uint8(m)}
}

// policyEndpoint is struct cm_policy_endpoint.
type policyEndpoint struct {
	Identity uint32
	Flags    uint8
	Pad      [3]uint8
}

// policyConfig is struct cm_policy_config.
type policyConfig struct {
	SampleRate uint32
	ClusterID  uint16
	Flags      uint16
	PolicyRev  uint32
	Pad        uint32
}

// ctKey is struct cm_ct_key.
type ctKey struct {
	Local   [16]byte
	Remote  [16]byte
	LPort   uint16
	RPort   uint16
	Proto   uint8
	Family  uint8
	Pad     uint16
	Ifindex uint32
}

// ctValue is struct cm_ct_value.
type ctValue struct {
	LastSeen     uint64
	PeerIdentity uint32
	Rev          uint32
	PeerCluster  uint16
	Origin       uint8
	Flags        uint8
	ProxyPort    uint16
	Pad          uint16
}

// metricsSlots is the size of cm_policy_metrics (package flows reads it).
const metricsSlots = 16

// Sizes of the structs above, checked by the tests against binary.Size and
// the program's BTF.
const (
	policyKeySize      = 16
	policyValueSize    = 4
	policyEndpointSize = 8
	policyConfigSize   = 16
	ctKeySize          = 44
	ctValueSize        = 24
)

// Packet marks (skb->mark) shared by the programs, the agent's L7 proxy
// (package l7proxy) and its policy routing (bpf/policy.c, MARK_*;
// docs/l7-redirect.md). Only the bits of MarkMagicMask are the kind; a
// pod cannot set any of them (a veth between namespaces clears the mark).
const (
	// MarkMagicMask selects the kind of a mark.
	MarkMagicMask uint32 = 0x0F00
	// MarkToProxy: the programs assigned the packet to a proxy socket; the
	// agent routes it locally (rule fwmark MarkToProxy/MarkMagicMask to a
	// table whose one route is local).
	MarkToProxy uint32 = 0x0200
	// MarkFromIngressProxy, on the upstream connections of an ingress
	// proxy: never sent back to a proxy.
	MarkFromIngressProxy uint32 = 0x0A00
	// MarkFromEgressProxy, on the upstream connections of an egress proxy:
	// the destination's ingress policy (and its proxy) still applies.
	MarkFromEgressProxy uint32 = 0x0B00
	// MarkProxyReply, on the proxy's answers to its clients (its listeners,
	// so their accepted connections, and its datagram replies): never taken
	// for a reply to one of its upstream connections.
	MarkProxyReply uint32 = 0x0C00
)
