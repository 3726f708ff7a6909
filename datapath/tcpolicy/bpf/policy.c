// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * clustermesh network policy: tc programs on the host side of each local
 * endpoint's veth that allow or drop every IPv4 and IPv6 packet by the
 * (endpoint identity, peer identity, direction, protocol, destination port)
 * of the agent's policy map, and report flows in a ring buffer.
 *
 *   cm_policy_from_ep  tc ingress of the host-side veth: packets leaving the
 *                      pod (the endpoint's EGRESS). Peer: the destination.
 *   cm_policy_to_ep    tc egress of the host-side veth: packets entering the
 *                      pod (the endpoint's INGRESS). Peer: the source.
 *
 * Per packet:
 *   1. cm_policy_endpoints[ifindex] gives the endpoint's identity and which
 *      directions are enforced (no entry: the packet is left alone).
 *   2. Non-IP packets (ARP) and IPv6 neighbour discovery pass.
 *   3. Connection tracking (cm_policy_ct, LRU, keyed per interface by the
 *      endpoint's and the peer's address and port): a reply of a flow this
 *      endpoint allowed in the other direction passes without a policy
 *      lookup.
 *   4. Otherwise, in an enforced direction: the peer's identity is the
 *      ipcache's (cm_ipcache, longest prefix; none: 2, world) and the policy
 *      map (cm_policy, an LPM trie whose prefix covers endpoint, peer and
 *      direction always, then optionally protocol and the leading bits of
 *      the destination port) must hold an entry for the peer, or for peer 0
 *      (any peer; looked up only while such entries exist,
 *      CFG_HAS_ANY_PEER).
 *      The verdict is cached in the flow's conntrack entry with the policy
 *      revision (cm_policy_config.policy_rev) it was computed at: later
 *      packets of the flow skip both lookups until the agent bumps the
 *      revision (it does when it removes an entry or changes an endpoint),
 *      after which the next packet of every flow is checked again. So
 *      removing an entry cuts established flows too (their replies still
 *      pass while the flow's conntrack entry lives). CFG_STRICT checks
 *      every packet.
 *      An endpoint in audit mode (EP_AUDIT) lets a packet the policy
 *      denies pass: it is reported with verdict AUDIT, and its flow is
 *      marked audited (CT_F_AUDIT) while its cached verdict holds.
 *   5. An allowed packet that is not a reply creates or refreshes the flow's
 *      conntrack entry; a dropped one is reported in cm_policy_flows, always
 *      (a drop event, KIND_DROP); an allowed one (a trace event, KIND_TRACE)
 *      1 in cm_policy_config.sample_rate (0: never), and every new flow when
 *      CFG_TRACE_NEW is set. With CFG_POLICY_VERDICTS, every policy decision
 *      of an enforced direction that denied a packet, or allowed (or
 *      audited) the packet that creates a conntrack entry, is also reported
 *      as a policy-verdict event (KIND_POLICY_VERDICT, before the drop or
 *      trace event) with the kind of policy entry that matched
 *      (POLICY_MATCH_*, stored in the entry's value by the agent). Events
 *      the ring buffer cannot take are counted (CNT_EVENTS_LOST).
 *
 * Allowed packets return TC_ACT_UNSPEC (TCX_NEXT): the next program or the
 * default action decides; dropped ones TC_ACT_SHOT.
 *
 * L7 redirect (docs/l7-redirect.md). An entry whose value has a proxy port
 * sends its flows to the agent's transparent listener on that port in the
 * node's network namespace (package l7proxy), cached in the flow's
 * conntrack entry like the verdict:
 *   - the endpoint's EGRESS (cm_policy_from_ep, tc ingress): the packet is
 *     assigned (bpf_sk_assign) to the proxy's socket: the connection's own
 *     accepted socket (looked up by the packet's tuple) once there is one,
 *     else the listener on the proxy port, and marked MARK_TO_PROXY, which
 *     the agent's policy routing delivers locally instead of forwarding;
 *   - the endpoint's INGRESS (cm_policy_to_ep, tc egress, where sk_assign is
 *     refused): the packet is sent back into the same veth's ingress
 *     (bpf_redirect with BPF_F_INGRESS, its destination MAC made the
 *     veth's own) marked MARK_HAIRPIN with the proxy port, and
 *     cm_policy_from_ep assigns it as above without any other check.
 *   A proxy port with no listener drops the packet (REASON_PROXY,
 *   CNT_DROPPED_PROXY_*): never past the proxy. The proxy's upstream
 *   connections leave the node's namespace with the client's own address
 *   (IP_TRANSPARENT) and a mark (MARK_FROM_*_PROXY): to_ep checks them as
 *   any packet (the source's identity is the ipcache's), but never sends
 *   what comes from an ingress proxy back to a proxy, and marks their
 *   conntrack entry CT_F_UPSTREAM: from_ep assigns their replies to the
 *   upstream's socket (to_upstream). Replies from another node are routed
 *   to the client's veth (the agent turns the stack's early demultiplexing
 *   off, which would find the socket and make the forward drop them):
 *   to_ep, finding no conntrack entry (or one of the endpoint's proxied or
 *   closing flows, whose port the upstream may have taken again), looks
 *   their tuple up among the node's sockets and hairpins them (MARK_HAIRPIN,
 *   port 0) to be assigned. The proxy's answers to its clients carry
 *   MARK_PROXY_REPLY.
 *
 * Layouts: datapath/layout.go (cm_ipcache), datapath/tcpolicy/layout.go
 * (the policy maps) and datapath/flows/layout.go (the events, the counters).
 * The Go loader replaces every map below with the live pinned one
 * (MapReplacements), so max_entries here is a placeholder.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define FAMILY4 4
#define FAMILY6 6

#define DIR_INGRESS 0
#define DIR_EGRESS 1

#define IDENTITY_WORLD 2

#define IPPROTO_ICMPV6_ 58
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60
#define NEXTHDR_AUTH 51

/* Endpoint flags (cm_policy_endpoint.flags). */
#define EP_ENFORCE_INGRESS 1
#define EP_ENFORCE_EGRESS 2
#define EP_AUDIT 4 /* denied packets pass, reported as AUDIT */

/* Global flags (cm_policy_config.flags). */
#define CFG_TRACE_NEW 1    /* report every new flow */
#define CFG_HAS_ANY_PEER 2 /* cm_policy holds entries for peer 0 */
#define CFG_STRICT 4       /* no cached verdicts: every packet is looked up */
#define CFG_POLICY_VERDICTS 8 /* report policy-verdict events */

/* Verdicts and drop reasons of a flow event. */
#define VERDICT_FORWARDED 1
#define VERDICT_DROPPED 2
#define VERDICT_AUDIT 4 /* Hubble's AUDIT */

/* Kinds of flow events: Cilium's monitor message types. */
#define KIND_DROP 1           /* CILIUM_NOTIFY_DROP */
#define KIND_TRACE 4          /* CILIUM_NOTIFY_TRACE */
#define KIND_POLICY_VERDICT 5 /* CILIUM_NOTIFY_POLICY_VERDICT */
#define REASON_NONE 0
#define REASON_POLICY 1
#define REASON_INVALID 2
#define REASON_PROXY 3 /* the entry's proxy is not listening */
#define VERDICT_REDIRECTED 5 /* Hubble's REDIRECTED: sent to the L7 proxy */

/* skb->mark between the programs, the agent's proxy and its policy
 * routing (l7proxy: the rule fwmark MARK_TO_PROXY/MARK_MAGIC_MASK to a
 * table whose one route is local). Packets from a pod carry none: a veth
 * between namespaces clears the mark. */
#define MARK_MAGIC_MASK 0x0F00
#define MARK_TO_PROXY 0x0200           /* assigned to a proxy socket: deliver locally */
#define MARK_HAIRPIN 0x0300            /* to_ep to from_ep; proxy port in bits 16-31 (0: a reply to an upstream) */
#define MARK_FROM_INGRESS_PROXY 0x0A00 /* an ingress proxy's upstream connection */
#define MARK_FROM_EGRESS_PROXY 0x0B00  /* an egress proxy's upstream connection */
#define MARK_PROXY_REPLY 0x0C00        /* the proxy's answers to a client (its accepted and reply sockets) */

/* Flow event flags. */
#define FLOW_REPLY 1    /* a reply of a tracked flow */
#define FLOW_NEW 2      /* created the flow's conntrack entry */
#define FLOW_SAMPLED 4  /* a forwarded packet reported by sampling */
#define FLOW_FRAGMENT 8 /* a non-first fragment: no ports */
#define FLOW_PROXY 16   /* sent to the L7 proxy (proxy_port) */

/* Counters (cm_policy_metrics, per CPU). */
#define CNT_FORWARDED_INGRESS 0
#define CNT_FORWARDED_EGRESS 1
#define CNT_DROPPED_POLICY_INGRESS 2
#define CNT_DROPPED_POLICY_EGRESS 3
#define CNT_DROPPED_INVALID_INGRESS 4
#define CNT_DROPPED_INVALID_EGRESS 5
#define CNT_EVENTS 6
#define CNT_EVENTS_LOST 7
#define CNT_CT_CREATED 8
#define CNT_AUDITED_INGRESS 9 /* lookups that denied, passed by audit mode */
#define CNT_AUDITED_EGRESS 10
#define CNT_DROPPED_PROXY_INGRESS 11 /* proxy port without a listener */
#define CNT_DROPPED_PROXY_EGRESS 12
#define CNT_REDIRECTED_INGRESS 13 /* packets sent to the L7 proxy */
#define CNT_REDIRECTED_EGRESS 14
#define CNT_SAMPLE_TICK 15 /* the sampler's per-CPU position */
#define CNT_MAX 16

/* Conntrack lifetimes (ns since the last packet either way). */
#define CT_LIFETIME_TCP (6ULL * 3600 * 1000000000)
#define CT_LIFETIME_OTHER (60ULL * 1000000000)
#define CT_LIFETIME_CLOSING (10ULL * 1000000000)
#define CT_REFRESH (1000000000ULL) /* last_seen is rewritten at most once a second */

#define CT_F_CLOSING 1  /* FIN or RST seen */
#define CT_F_VERDICT 2  /* the flow was allowed by a lookup at revision rev */
#define CT_F_AUDIT 4    /* ... only by audit mode */
#define CT_F_UPSTREAM 8 /* opened by a proxy's upstream connection (MARK_FROM_*_PROXY) */

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

struct cm_ipcache_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	__u32 addr[4];
};

struct cm_ipcache_value {
	__u32 identity;
	__u32 tunnel_endpoint[4];
	__u16 cluster_id;
	__u8 tunnel_family;
	__u8 pad;
};

/* The policy trie's key. The data after prefixlen is compared bit by bit
 * from the first byte: endpoint, peer and direction (72 bits) are always
 * part of an entry's prefix; 80 adds the protocol, 80 + n the first n bits
 * of the (big-endian) destination port. */
struct cm_policy_key {
	__u32 prefixlen;
	__u32 endpoint;  /* local identity */
	__u32 peer;      /* peer identity; 0: any peer */
	__u8 direction;  /* DIR_INGRESS, DIR_EGRESS */
	__u8 proto;
	__be16 port;
};

#define POLICY_PREFIX_FULL 96

/* Cilium's POLICY_MATCH_* (bpf/lib/policy.h): which kind of entry allowed a
 * flow. The agent stores it in each entry's value (it follows from the
 * entry's prefix and whether its peer is 0). */
#define POLICY_MATCH_NONE 0
#define POLICY_MATCH_L3_ONLY 1
#define POLICY_MATCH_L3_L4 2
#define POLICY_MATCH_L4_ONLY 3
#define POLICY_MATCH_ALL 4
#define POLICY_MATCH_L3_PROTO 5
#define POLICY_MATCH_PROTO_ONLY 6

struct cm_policy_value {
	__u8 match_type; /* POLICY_MATCH_* */
	__u8 pad;
	__u16 proxy_port; /* the L7 proxy's listener (host order); 0: none */
};

struct cm_policy_endpoint {
	__u32 identity;
	__u8 flags;  /* EP_ENFORCE_* */
	__u8 pad[3];
};

struct cm_policy_config {
	__u32 sample_rate; /* 1 in N forwarded packets reported; 0: none */
	__u16 cluster_id;  /* the local cluster, reported for the endpoint */
	__u16 flags;       /* CFG_* */
	__u32 policy_rev;  /* bumped when cached verdicts must be checked again */
	__u32 pad;
};

/* Conntrack, from the endpoint's side of one interface. */
struct cm_ct_key {
	__u32 local[4];   /* the endpoint's address */
	__u32 remote[4];  /* the peer's */
	__be16 lport;
	__be16 rport;
	__u8 proto;
	__u8 family;
	__u16 pad;
	__u32 ifindex;
};

struct cm_ct_value {
	__u64 last_seen;      /* bpf_ktime_get_coarse_ns of the last packet */
	__u32 peer_identity;  /* resolved at the flow's first (or last checked) packet */
	__u32 rev;            /* policy_rev of the cached verdict (CT_F_VERDICT) */
	__u16 peer_cluster;
	__u8 origin;          /* direction of the flow's first packet */
	__u8 flags;           /* CT_F_* */
	__u16 proxy_port;     /* of the cached verdict's entry: the flow goes to the L7 proxy */
	__u16 pad;
};

struct cm_flow_event {
	__u64 timestamp;  /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
	__u32 src_addr[4];
	__u32 dst_addr[4];
	__u32 src_identity;
	__u32 dst_identity;
	__u32 ifindex;
	__u32 len;        /* packet length */
	__u32 sample_rate;
	__be16 src_port;
	__be16 dst_port;
	__u16 src_cluster;
	__u16 dst_cluster;
	__u8 family;
	__u8 proto;
	__u8 verdict;
	__u8 reason;
	__u8 direction;   /* of the endpoint */
	__u8 flags;       /* FLOW_* */
	__u8 kind;        /* KIND_* */
	__u8 tcp_flags;   /* of a TCP packet */
	__u8 match_type;  /* POLICY_MATCH_* of a policy-verdict event */
	__u8 pad;         /* the socket load balancer's xlate point */
	__u16 proxy_port; /* FLOW_PROXY: the L7 proxy's port */
};

/* The Go decoder (decode in datapath/flows/layout.go) reads these
 * offsets; the events carry no BTF. */
#define CHECK_OFF(f, off) _Static_assert(__builtin_offsetof(struct cm_flow_event, f) == off, #f)
CHECK_OFF(timestamp, 0);
CHECK_OFF(src_addr, 8);
CHECK_OFF(dst_addr, 24);
CHECK_OFF(src_identity, 40);
CHECK_OFF(dst_identity, 44);
CHECK_OFF(ifindex, 48);
CHECK_OFF(len, 52);
CHECK_OFF(sample_rate, 56);
CHECK_OFF(src_port, 60);
CHECK_OFF(dst_port, 62);
CHECK_OFF(src_cluster, 64);
CHECK_OFF(dst_cluster, 66);
CHECK_OFF(family, 68);
CHECK_OFF(proto, 69);
CHECK_OFF(verdict, 70);
CHECK_OFF(reason, 71);
CHECK_OFF(direction, 72);
CHECK_OFF(flags, 73);
CHECK_OFF(kind, 74);
CHECK_OFF(tcp_flags, 75);
CHECK_OFF(match_type, 76);
CHECK_OFF(proxy_port, 78);
_Static_assert(sizeof(struct cm_flow_event) == 80, "cm_flow_event size");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cm_ipcache_key);
	__type(value, struct cm_ipcache_value);
	__uint(max_entries, 1);
} cm_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cm_policy_key);
	__type(value, struct cm_policy_value);
	__uint(max_entries, 1);
} cm_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct cm_policy_endpoint);
	__uint(max_entries, 1);
} cm_policy_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct cm_policy_config);
	__uint(max_entries, 1);
} cm_policy_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct cm_ct_key);
	__type(value, struct cm_ct_value);
	__uint(max_entries, 1);
} cm_policy_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, CNT_MAX);
} cm_policy_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} cm_policy_flows SEC(".maps");

/* What the parser found. Addresses as 4 words, IPv4 in the first. */
struct pkt {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 family;
	__u8 proto;
	__u8 tcp_flags;
	__u8 fragment; /* a non-first fragment: no L4 header */
};

enum parse_result {
	PARSE_OK,
	PARSE_NOT_IP,  /* not IPv4 or IPv6: left alone */
	PARSE_PASS,    /* always allowed (IPv6 neighbour discovery) */
	PARSE_INVALID, /* truncated or malformed header */
};

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&cm_policy_metrics, &idx);

	if (c)
		*c += n;
}

/* load copies len bytes at off, pulling them into the linear area if
 * needed; returns 0 on success. */
static __always_inline int load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	return bpf_skb_load_bytes(skb, off, to, len);
}

struct l4ports {
	__be16 sport;
	__be16 dport;
};

/* icmp6_link_local: multicast listener queries and reports (130-132,
 * 143), router and neighbour solicitation and advertisement, redirect
 * (133-137): the link needs them whatever the policy. */
static __always_inline int icmp6_link_local(__u8 type)
{
	return (type >= 130 && type <= 137) || type == 143;
}

static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	if (p->fragment)
		return PARSE_OK;
	switch (p->proto) {
	case IPPROTO_TCP: {
		__u8 hdr[14];

		if (load(skb, off, hdr, sizeof(hdr)))
			return PARSE_INVALID;
		p->sport = *(__be16 *)&hdr[0];
		p->dport = *(__be16 *)&hdr[2];
		p->tcp_flags = hdr[13];
		return PARSE_OK;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		struct l4ports ports;

		if (load(skb, off, &ports, sizeof(ports)))
			return PARSE_INVALID;
		p->sport = ports.sport;
		p->dport = ports.dport;
		return PARSE_OK;
	}
	case IPPROTO_ICMPV6_: {
		__u8 type;

		if (load(skb, off, &type, 1))
			return PARSE_INVALID;
		if (icmp6_link_local(type))
			return PARSE_PASS;
		return PARSE_OK;
	}
	}
	return PARSE_OK;
}


#define PARSE_SLOW 4 /* parse_fast: take the slow path */

struct ip4hdr {
	__u8 vihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__u32 saddr;
	__u32 daddr;
};

struct ip6hdr {
	__u32 vtcfl;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u32 saddr[4];
	__u32 daddr[4];
};

/* parse_fast reads the common packets straight from the linear data:
 * IPv4 without options or fragmentation, IPv6 without extension headers,
 * then TCP, UDP, SCTP, ICMP. Anything else, or headers beyond the linear
 * area, takes the slow path (PARSE_SLOW). */
static __always_inline int parse_fast(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	void *l4;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct ip4hdr *ip = data + ETH_HLEN;

		if ((void *)(ip + 1) > data_end)
			return PARSE_SLOW;
		if (ip->vihl != 0x45 || (ip->frag_off & bpf_htons(0x3fff)))
			return PARSE_SLOW;
		p->family = FAMILY4;
		p->proto = ip->protocol;
		p->saddr[0] = ip->saddr;
		p->daddr[0] = ip->daddr;
		l4 = ip + 1;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ip6hdr *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > data_end)
			return PARSE_SLOW;
		if ((ip6->vtcfl & 0xf0) != 0x60)
			return PARSE_SLOW;
		switch (ip6->nexthdr) {
		case IPPROTO_TCP:
		case IPPROTO_UDP:
		case IPPROTO_SCTP:
		case IPPROTO_ICMPV6_:
			break;
		default:
			return PARSE_SLOW;
		}
		p->family = FAMILY6;
		p->proto = ip6->nexthdr;
		__builtin_memcpy(p->saddr, ip6->saddr, 16);
		__builtin_memcpy(p->daddr, ip6->daddr, 16);
		l4 = ip6 + 1;
	} else {
		return PARSE_NOT_IP;
	}

	switch (p->proto) {
	case IPPROTO_TCP: {
		__u8 *tcp = l4;

		if ((void *)(tcp + 14) > data_end)
			return PARSE_SLOW;
		p->sport = *(__be16 *)&tcp[0];
		p->dport = *(__be16 *)&tcp[2];
		p->tcp_flags = tcp[13];
		return PARSE_OK;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		struct l4ports *ports = l4;

		if ((void *)(ports + 1) > data_end)
			return PARSE_SLOW;
		p->sport = ports->sport;
		p->dport = ports->dport;
		return PARSE_OK;
	}
	case IPPROTO_ICMPV6_: {
		__u8 *type = l4;

		if ((void *)(type + 1) > data_end)
			return PARSE_SLOW;
		if (icmp6_link_local(*type))
			return PARSE_PASS;
		return PARSE_OK;
	}
	}
	return PARSE_OK;
}

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u16 eth_proto = skb->protocol;
	__u32 off = ETH_HLEN;

	if (eth_proto == bpf_htons(ETH_P_IP)) {
		struct {
			__u8 vihl;
			__u8 tos;
			__be16 tot_len;
			__be16 id;
			__be16 frag_off;
			__u8 ttl;
			__u8 protocol;
			__u16 check;
			__u32 saddr;
			__u32 daddr;
		} ip;
		__u32 ihl;

		if (load(skb, off, &ip, sizeof(ip)))
			return PARSE_INVALID;
		ihl = (ip.vihl & 0xf) * 4;
		if ((ip.vihl >> 4) != 4 || ihl < 20)
			return PARSE_INVALID;
		p->family = FAMILY4;
		p->proto = ip.protocol;
		p->saddr[0] = ip.saddr;
		p->daddr[0] = ip.daddr;
		p->fragment = (ip.frag_off & bpf_htons(0x1fff)) != 0;
		return parse_l4(skb, off + ihl, p);
	}
	if (eth_proto == bpf_htons(ETH_P_IPV6)) {
		struct {
			__u32 vtcfl;
			__be16 payload_len;
			__u8 nexthdr;
			__u8 hop_limit;
			__u32 saddr[4];
			__u32 daddr[4];
		} ip6;
		__u8 nexthdr;
		int i;

		if (load(skb, off, &ip6, sizeof(ip6)))
			return PARSE_INVALID;
		if ((ip6.vtcfl & 0xf0) != 0x60)
			return PARSE_INVALID;
		p->family = FAMILY6;
		__builtin_memcpy(p->saddr, ip6.saddr, 16);
		__builtin_memcpy(p->daddr, ip6.daddr, 16);
		off += 40;
		nexthdr = ip6.nexthdr;
		/* Up to four extension headers. */
#pragma unroll
		for (i = 0; i < 4; i++) {
			__u8 ext[2];

			if (nexthdr != NEXTHDR_HOP && nexthdr != NEXTHDR_ROUTING &&
			    nexthdr != NEXTHDR_DEST && nexthdr != NEXTHDR_FRAGMENT &&
			    nexthdr != NEXTHDR_AUTH)
				break;
			if (nexthdr == NEXTHDR_FRAGMENT) {
				struct {
					__u8 nexthdr;
					__u8 reserved;
					__be16 frag_off;
					__u32 id;
				} frag;

				if (load(skb, off, &frag, sizeof(frag)))
					return PARSE_INVALID;
				if (frag.frag_off & bpf_htons(0xfff8))
					p->fragment = 1;
				nexthdr = frag.nexthdr;
				off += 8;
				continue;
			}
			if (load(skb, off, ext, sizeof(ext)))
				return PARSE_INVALID;
			nexthdr = ext[0];
			if (nexthdr == NEXTHDR_AUTH)
				off += ((__u32)ext[1] + 2) * 4;
			else
				off += ((__u32)ext[1] + 1) * 8;
		}
		p->proto = nexthdr;
		return parse_l4(skb, off, p);
	}
	return PARSE_NOT_IP;
}

static __always_inline void lookup_peer(const struct pkt *p, const __u32 *addr, __u32 *identity, __u16 *cluster)
{
	struct cm_ipcache_key key = {
		.prefixlen = 32 + (p->family == FAMILY4 ? 32 : 128),
		.family = p->family,
	};
	struct cm_ipcache_value *v;

	__builtin_memcpy(key.addr, addr, 16);
	v = bpf_map_lookup_elem(&cm_ipcache, &key);
	if (v) {
		*identity = v->identity;
		*cluster = v->cluster_id;
	} else {
		*identity = IDENTITY_WORLD;
		*cluster = 0;
	}
}

/* policy_lookup returns the entry that allows the packet, or NULL. */
static __always_inline struct cm_policy_value *policy_lookup(__u32 endpoint, __u32 peer, __u8 dir,
							     const struct pkt *p,
							     const struct cm_policy_config *cfg)
{
	struct cm_policy_value *v;
	struct cm_policy_key key = {
		.prefixlen = POLICY_PREFIX_FULL,
		.endpoint = endpoint,
		.peer = peer,
		.direction = dir,
		.proto = p->proto,
		.port = p->dport, /* 0 for a non-first fragment or a portless protocol */
	};

	v = bpf_map_lookup_elem(&cm_policy, &key);
	if (v)
		return v;
	if (!cfg || !(cfg->flags & CFG_HAS_ANY_PEER))
		return 0;
	key.peer = 0;
	return bpf_map_lookup_elem(&cm_policy, &key);
}

/* wakeup is the flag of an event's submit: the reader is woken only once a
 * quarter of the ring waits (each wakeup, an irq_work that schedules the
 * reader's thread, costs microseconds on the packet's or the socket's
 * path); meanwhile it polls (datapath/flows: Reader, every PollInterval). */
static __always_inline __u64 wakeup(void *ring)
{
	return bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) >= bpf_ringbuf_query(ring, BPF_RB_RING_SIZE) / 4 ?
		       BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* What an event says beyond the packet and its peer. */
struct verdict {
	__u8 kind;       /* KIND_* */
	__u8 verdict;    /* VERDICT_* */
	__u8 reason;     /* REASON_* */
	__u8 match_type; /* POLICY_MATCH_* */
	__u8 flags;      /* FLOW_* */
	__u16 proxy_port; /* FLOW_PROXY */
};

static __always_inline void emit(struct __sk_buff *skb, const struct pkt *p, __u8 dir,
				 const struct cm_policy_endpoint *ep, const struct cm_policy_config *cfg,
				 __u32 peer_id, __u16 peer_cluster, struct verdict v)
{
	struct cm_flow_event *e = bpf_ringbuf_reserve(&cm_policy_flows, sizeof(*e), 0);
	__u16 local_cluster = cfg ? cfg->cluster_id : 0;

	if (!e) {
		count(CNT_EVENTS_LOST, 1);
		return;
	}
	e->timestamp = bpf_ktime_get_ns();
	__builtin_memcpy(e->src_addr, p->saddr, 16);
	__builtin_memcpy(e->dst_addr, p->daddr, 16);
	if (dir == DIR_EGRESS) {
		e->src_identity = ep->identity;
		e->src_cluster = local_cluster;
		e->dst_identity = peer_id;
		e->dst_cluster = peer_cluster;
	} else {
		e->src_identity = peer_id;
		e->src_cluster = peer_cluster;
		e->dst_identity = ep->identity;
		e->dst_cluster = local_cluster;
	}
	e->ifindex = skb->ifindex;
	e->len = skb->len;
	e->sample_rate = cfg ? cfg->sample_rate : 0;
	e->src_port = p->sport;
	e->dst_port = p->dport;
	e->family = p->family;
	e->proto = p->proto;
	e->verdict = v.verdict;
	e->reason = v.reason;
	e->direction = dir;
	e->flags = v.flags | (p->fragment ? FLOW_FRAGMENT : 0);
	e->kind = v.kind;
	e->tcp_flags = p->proto == IPPROTO_TCP ? p->tcp_flags : 0;
	e->match_type = v.match_type;
	e->pad = 0;
	e->proxy_port = v.proxy_port;
	bpf_ringbuf_submit(e, wakeup(&cm_policy_flows));
	count(CNT_EVENTS, 1);
}

static __always_inline int drop(struct __sk_buff *skb, const struct pkt *p, __u8 dir,
				const struct cm_policy_endpoint *ep, const struct cm_policy_config *cfg,
				__u32 peer_id, __u16 peer_cluster, __u8 reason)
{
	if (reason == REASON_POLICY)
		count(dir == DIR_EGRESS ? CNT_DROPPED_POLICY_EGRESS : CNT_DROPPED_POLICY_INGRESS, 1);
	else if (reason == REASON_PROXY)
		count(dir == DIR_EGRESS ? CNT_DROPPED_PROXY_EGRESS : CNT_DROPPED_PROXY_INGRESS, 1);
	else
		count(dir == DIR_EGRESS ? CNT_DROPPED_INVALID_EGRESS : CNT_DROPPED_INVALID_INGRESS, 1);
	if (reason == REASON_POLICY && cfg && (cfg->flags & CFG_POLICY_VERDICTS))
		emit(skb, p, dir, ep, cfg, peer_id, peer_cluster,
		     (struct verdict){.kind = KIND_POLICY_VERDICT, .verdict = VERDICT_DROPPED, .reason = reason});
	emit(skb, p, dir, ep, cfg, peer_id, peer_cluster,
	     (struct verdict){.kind = KIND_DROP, .verdict = VERDICT_DROPPED, .reason = reason});
	return TC_ACT_SHOT;
}

/* sampled reports whether this forwarded packet is the 1 in rate. */
static __always_inline int sampled(const struct cm_policy_config *cfg)
{
	__u32 idx = CNT_SAMPLE_TICK;
	__u64 *tick;

	if (!cfg || cfg->sample_rate == 0)
		return 0;
	tick = bpf_map_lookup_elem(&cm_policy_metrics, &idx);
	if (!tick)
		return 0;
	if (++*tick < cfg->sample_rate)
		return 0;
	*tick = 0;
	return 1;
}

static __always_inline __u64 ct_lifetime(const struct cm_ct_value *v, __u8 proto)
{
	if (v->flags & CT_F_CLOSING)
		return CT_LIFETIME_CLOSING;
	return proto == IPPROTO_TCP ? CT_LIFETIME_TCP : CT_LIFETIME_OTHER;
}

/* parse_any is the fast parser, then the slow one where it gives up. */
static __always_inline int parse_any(struct __sk_buff *skb, struct pkt *p)
{
	int r = parse_fast(skb, p);

	if (r != PARSE_SLOW)
		return r;
	__builtin_memset(p, 0, sizeof(*p));
	return parse(skb, p);
}

/* L7 redirect (see the top of the file). */

/* sock_tuple fills t from the packet, with destination port dport; returns
 * its length. */
static __always_inline __u32 sock_tuple(struct bpf_sock_tuple *t, const struct pkt *p, __be16 dport)
{
	__builtin_memset(t, 0, sizeof(*t));
	if (p->family == FAMILY4) {
		t->ipv4.saddr = p->saddr[0];
		t->ipv4.daddr = p->daddr[0];
		t->ipv4.sport = p->sport;
		t->ipv4.dport = dport;
		return sizeof(t->ipv4);
	}
	__builtin_memcpy(t->ipv6.saddr, p->saddr, 16);
	__builtin_memcpy(t->ipv6.daddr, p->daddr, 16);
	t->ipv6.sport = p->sport;
	t->ipv6.dport = dport;
	return sizeof(t->ipv6);
}

/* tcp_syn: the first packet of a connection. */
static __always_inline int tcp_syn(const struct pkt *p)
{
	return (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* The socket the packet would be delivered to in the node's namespace:
 * by its own tuple (established: a connection's socket, never a listener or
 * a TIME_WAIT one), or the listener on proxy_port (network order). */
#define SK_ESTABLISHED 0
#define SK_PROXY_PORT 1

/* assign_tcp assigns the packet to a TCP socket; 0 on success. */
static __always_inline int assign_tcp(struct __sk_buff *skb, const struct pkt *p, __be16 port, int how)
{
	struct bpf_sock_tuple t;
	__u32 len = sock_tuple(&t, p, how == SK_ESTABLISHED ? p->dport : port);
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	long err;

	if (!sk)
		return -1;
	if (how == SK_ESTABLISHED && (sk->state == BPF_TCP_LISTEN || sk->state == BPF_TCP_TIME_WAIT)) {
		bpf_sk_release(sk);
		return -1;
	}
	if (how == SK_PROXY_PORT && sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return -1;
	}
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? -1 : 0;
}

/* assign_udp assigns the packet to a UDP socket; 0 on success. Established:
 * a connected socket of exactly this tuple (a proxy's upstream). */
static __always_inline int assign_udp(struct __sk_buff *skb, const struct pkt *p, __be16 port, int how)
{
	struct bpf_sock_tuple t;
	__u32 len = sock_tuple(&t, p, how == SK_ESTABLISHED ? p->dport : port);
	struct bpf_sock *sk = bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	long err;

	if (!sk)
		return -1;
	if (how == SK_ESTABLISHED && (sk->state != BPF_TCP_ESTABLISHED || sk->dst_port != p->sport)) {
		bpf_sk_release(sk);
		return -1;
	}
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? -1 : 0;
}

/* proxy_assign gives a packet of a redirected flow to the proxy listening
 * on proxy_port (host order): a TCP packet after the first to the
 * connection's own socket when there is one; marks it for local delivery.
 * 0 on success. */
static __always_inline int proxy_assign(struct __sk_buff *skb, const struct pkt *p, __u16 proxy_port)
{
	__be16 port = bpf_htons(proxy_port);
	int r = -1;

	if (p->proto == IPPROTO_TCP) {
		if (!tcp_syn(p))
			r = assign_tcp(skb, p, port, SK_ESTABLISHED);
		if (r)
			r = assign_tcp(skb, p, port, SK_PROXY_PORT);
	} else if (p->proto == IPPROTO_UDP) {
		r = assign_udp(skb, p, port, SK_PROXY_PORT);
	}
	if (r == 0)
		skb->mark = MARK_TO_PROXY;
	return r;
}

/* proxy_listening reports whether a proxy listens on proxy_port for the
 * packet's protocol (to_ep, which cannot assign). */
static __always_inline int proxy_listening(struct __sk_buff *skb, const struct pkt *p, __u16 proxy_port)
{
	struct bpf_sock_tuple t;
	__u32 len = sock_tuple(&t, p, bpf_htons(proxy_port));
	struct bpf_sock *sk;
	int ok;

	if (p->proto == IPPROTO_TCP) {
		sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
		ok = sk->state == BPF_TCP_LISTEN;
		bpf_sk_release(sk);
		return ok;
	}
	if (p->proto == IPPROTO_UDP) {
		sk = bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
		bpf_sk_release(sk);
		return 1;
	}
	return 0;
}

/* upstream_socket reports whether a connected socket of the node's
 * namespace owns the packet's tuple: a reply to a proxy's upstream
 * connection (bound to the client's address) that came from another node.
 * Only packets that cannot start a connection are looked up. */
static __always_inline int upstream_socket(struct __sk_buff *skb, const struct pkt *p)
{
	struct bpf_sock_tuple t;
	__u32 len;
	struct bpf_sock *sk;
	int ok;

	if (p->fragment)
		return 0;
	len = sock_tuple(&t, p, p->dport);
	if (p->proto == IPPROTO_TCP) {
		if (tcp_syn(p))
			return 0;
		sk = bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
		ok = sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_TIME_WAIT;
		bpf_sk_release(sk);
		return ok;
	}
	if (p->proto == IPPROTO_UDP) {
		sk = bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
		ok = sk->state == BPF_TCP_ESTABLISHED && sk->dst_port == p->sport;
		bpf_sk_release(sk);
		return ok;
	}
	return 0;
}

/* hairpin sends a packet leaving the host side of a veth back into its
 * ingress, for cm_policy_from_ep to assign it to a proxy socket: the
 * destination MAC becomes the veth's own (the source of the packet) so that
 * the stack takes it as addressed to the host. */
static __always_inline int hairpin(struct __sk_buff *skb, __u16 proxy_port)
{
	__u8 mac[ETH_ALEN];

	if (bpf_skb_load_bytes(skb, ETH_ALEN, mac, ETH_ALEN) ||
	    bpf_skb_store_bytes(skb, 0, mac, ETH_ALEN, 0))
		return TC_ACT_SHOT;
	skb->mark = MARK_HAIRPIN | ((__u32)proxy_port << 16);
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

/* to_upstream gives a reply to a proxy's upstream connection (CT_F_UPSTREAM)
 * to its socket in the node's namespace, bound to the client's address:
 * forwarded, it would be dropped (the stack's early demultiplexing finds
 * the socket, and a forwarded packet must not carry one). A reply whose
 * socket is gone is dropped. */
static __always_inline int to_upstream(struct __sk_buff *skb, const struct pkt *p)
{
	int r = -1;

	if (p->proto == IPPROTO_TCP)
		r = assign_tcp(skb, p, 0, SK_ESTABLISHED);
	else if (p->proto == IPPROTO_UDP)
		r = assign_udp(skb, p, 0, SK_ESTABLISHED);
	if (r)
		return TC_ACT_SHOT;
	skb->mark = MARK_TO_PROXY;
	count(CNT_FORWARDED_EGRESS, 1);
	return TC_ACT_OK;
}

/* from_hairpin: cm_policy_from_ep's part of hairpin, a packet whose checks
 * were done by cm_policy_to_ep. */
static __always_inline int from_hairpin(struct __sk_buff *skb)
{
	__u16 proxy_port = skb->mark >> 16;
	struct pkt p = {};
	int r = parse_any(skb, &p);

	skb->mark = 0;
	if (r != PARSE_OK)
		return TC_ACT_SHOT;
	if (!proxy_port)
		return to_upstream(skb, &p);
	if (proxy_assign(skb, &p, proxy_port)) {
		count(CNT_DROPPED_PROXY_INGRESS, 1);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

/* done is the action for a packet the policy let through: to the proxy
 * (assigned already on the endpoint's egress, hairpinned on its ingress),
 * or on its way. */
static __always_inline int done(struct __sk_buff *skb, __u8 dir, __u16 proxy_port)
{
	if (!proxy_port)
		return TC_ACT_UNSPEC;
	if (dir == DIR_EGRESS)
		return TC_ACT_OK;
	return hairpin(skb, proxy_port);
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	__u32 ifindex = skb->ifindex, zero = 0;
	struct cm_policy_endpoint *ep;
	struct cm_policy_config *cfg;
	struct cm_ct_value *ct;
	struct cm_ct_key ctk;
	struct pkt p = {};
	__u32 peer_id = 0, rev = 0;
	__u16 peer_cluster = 0;
	__u8 flags = 0, enforced, cfg_flags = 0, have_peer = 0, audited = 0, match = POLICY_MATCH_NONE;
	__u16 proxy_port = 0;
	__u32 magic = skb->mark & MARK_MAGIC_MASK;
	const __u32 *peer_addr;
	__u64 now;
	int r;

	if (dir == DIR_EGRESS && magic == MARK_HAIRPIN)
		return from_hairpin(skb);
	ep = bpf_map_lookup_elem(&cm_policy_endpoints, &ifindex);
	if (!ep)
		return TC_ACT_UNSPEC;
	enforced = ep->flags & (dir == DIR_EGRESS ? EP_ENFORCE_EGRESS : EP_ENFORCE_INGRESS);
	cfg = bpf_map_lookup_elem(&cm_policy_config, &zero);
	if (cfg) {
		rev = cfg->policy_rev;
		cfg_flags = cfg->flags;
	}

	r = parse_any(skb, &p);
	if (r == PARSE_NOT_IP || r == PARSE_PASS)
		return TC_ACT_UNSPEC;
	peer_addr = dir == DIR_EGRESS ? p.daddr : p.saddr;
	if (r == PARSE_INVALID) {
		if (!enforced)
			return TC_ACT_UNSPEC;
		lookup_peer(&p, peer_addr, &peer_id, &peer_cluster);
		return drop(skb, &p, dir, ep, cfg, peer_id, peer_cluster, REASON_INVALID);
	}

	/* The flow as the endpoint sees it. */
	__builtin_memset(&ctk, 0, sizeof(ctk));
	if (dir == DIR_EGRESS) {
		__builtin_memcpy(ctk.local, p.saddr, 16);
		__builtin_memcpy(ctk.remote, p.daddr, 16);
		ctk.lport = p.sport;
		ctk.rport = p.dport;
	} else {
		__builtin_memcpy(ctk.local, p.daddr, 16);
		__builtin_memcpy(ctk.remote, p.saddr, 16);
		ctk.lport = p.dport;
		ctk.rport = p.sport;
	}
	ctk.proto = p.proto;
	ctk.family = p.family;
	ctk.ifindex = ifindex;
	now = bpf_ktime_get_coarse_ns();
	ct = bpf_map_lookup_elem(&cm_policy_ct, &ctk);
	if (ct && now - ct->last_seen > ct_lifetime(ct, p.proto))
		ct = NULL; /* expired: as if absent (the update below replaces it) */
	/* A reply to a proxy's upstream connection from another node (one from
	 * this node's endpoints went to_upstream at their from_ep): to the
	 * proxy's socket. Looked up when the flow is unknown, and when it is
	 * one the endpoint opened whose port the upstream may have taken again
	 * (the node's kernel does not know the pod's ports): a proxied one (the
	 * endpoint's packets went to the proxy, so no answer from its peer is
	 * expected), or a closing one; but not the proxy's own answers to that
	 * flow (marked). A proxy's answer to another proxy's upstream (an
	 * egress proxy's, through the server's ingress proxy) is not the
	 * endpoint's flow: looked up. */
	if (dir == DIR_INGRESS &&
	    (!ct || (magic != MARK_PROXY_REPLY && ct->origin == DIR_EGRESS &&
		     (ct->proxy_port || (ct->flags & CT_F_CLOSING)))) &&
	    upstream_socket(skb, &p))
		return hairpin(skb, 0);

	if (ct) {
		peer_id = ct->peer_identity;
		peer_cluster = ct->peer_cluster;
		have_peer = 1;
	}
	if (ct && ct->origin != dir) {
		/* A reply of a flow allowed in the other direction; to the proxy
		 * that opened it, when one did. */
		flags |= FLOW_REPLY;
		if (dir == DIR_EGRESS && (ct->flags & CT_F_UPSTREAM))
			return to_upstream(skb, &p);
	} else if (enforced) {
		if (!ct || !(ct->flags & CT_F_VERDICT) || ct->rev != rev || (cfg_flags & CFG_STRICT)) {
			struct cm_policy_value *pv;

			lookup_peer(&p, peer_addr, &peer_id, &peer_cluster);
			have_peer = 1;
			pv = policy_lookup(ep->identity, peer_id, dir, &p, cfg);
			if (pv) {
				match = pv->match_type;
				proxy_port = pv->proxy_port;
			} else if (ep->flags & EP_AUDIT) {
				audited = 1;
				count(dir == DIR_EGRESS ? CNT_AUDITED_EGRESS : CNT_AUDITED_INGRESS, 1);
			} else {
				return drop(skb, &p, dir, ep, cfg, peer_id, peer_cluster, REASON_POLICY);
			}
			if (ct) {
				ct->peer_identity = peer_id;
				ct->peer_cluster = peer_cluster;
				if (magic != MARK_FROM_INGRESS_PROXY)
					ct->proxy_port = proxy_port;
				ct->rev = rev;
				ct->flags = (ct->flags & ~CT_F_AUDIT) | CT_F_VERDICT | (audited ? CT_F_AUDIT : 0);
			}
		} else {
			proxy_port = ct->proxy_port;
			if (ct->flags & CT_F_AUDIT)
				audited = 1;
		}
	}
	/* An ingress proxy's own upstream connection is never sent back to a
	 * proxy; the others go to theirs, or nowhere. */
	if (magic == MARK_FROM_INGRESS_PROXY && dir == DIR_INGRESS)
		proxy_port = 0;
	if (proxy_port) {
		if (p.proto != IPPROTO_TCP && p.proto != IPPROTO_UDP)
			proxy_port = 0;
		else if (dir == DIR_EGRESS ? proxy_assign(skb, &p, proxy_port) : !proxy_listening(skb, &p, proxy_port))
			return drop(skb, &p, dir, ep, cfg, peer_id, peer_cluster, REASON_PROXY);
	}

	if (ct) {
		if (dir == DIR_INGRESS && !(flags & FLOW_REPLY) && !(ct->flags & CT_F_UPSTREAM) &&
		    (magic == MARK_FROM_INGRESS_PROXY || magic == MARK_FROM_EGRESS_PROXY))
			ct->flags |= CT_F_UPSTREAM;
		if (p.proto == IPPROTO_TCP) {
			if (p.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) {
				if (!(ct->flags & CT_F_CLOSING))
					ct->flags |= CT_F_CLOSING;
			} else if ((p.tcp_flags & TCP_FLAG_SYN) && !(flags & FLOW_REPLY) && (ct->flags & CT_F_CLOSING)) {
				ct->flags &= ~CT_F_CLOSING; /* the tuple reused by a new connection */
			}
		}
		if (now - ct->last_seen > CT_REFRESH)
			ct->last_seen = now;
	} else {
		struct cm_ct_value v = {
			.last_seen = now,
			.origin = dir,
		};

		if (!have_peer) {
			lookup_peer(&p, peer_addr, &peer_id, &peer_cluster);
			have_peer = 1;
		}
		v.peer_identity = peer_id;
		v.peer_cluster = peer_cluster;
		if (enforced) {
			v.flags |= CT_F_VERDICT | (audited ? CT_F_AUDIT : 0);
			v.rev = rev;
			v.proxy_port = proxy_port;
		}
		if (p.proto == IPPROTO_TCP && (p.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
			v.flags |= CT_F_CLOSING;
		if (dir == DIR_INGRESS && (magic == MARK_FROM_INGRESS_PROXY || magic == MARK_FROM_EGRESS_PROXY))
			v.flags |= CT_F_UPSTREAM;
		bpf_map_update_elem(&cm_policy_ct, &ctk, &v, BPF_ANY);
		count(CNT_CT_CREATED, 1);
		flags |= FLOW_NEW;
	}

	if (proxy_port) {
		flags |= FLOW_PROXY;
		count(dir == DIR_EGRESS ? CNT_REDIRECTED_EGRESS : CNT_REDIRECTED_INGRESS, 1);
	} else {
		count(dir == DIR_EGRESS ? CNT_FORWARDED_EGRESS : CNT_FORWARDED_INGRESS, 1);
	}
	/* The policy decision that let the flow in: in an enforced direction,
	 * a new conntrack entry follows a lookup. */
	if ((flags & FLOW_NEW) && enforced && (cfg_flags & CFG_POLICY_VERDICTS))
		emit(skb, &p, dir, ep, cfg, peer_id, peer_cluster,
		     (struct verdict){.kind = KIND_POLICY_VERDICT, .verdict = audited ? VERDICT_AUDIT : VERDICT_FORWARDED,
				      .match_type = match, .flags = flags, .proxy_port = proxy_port});
	if (sampled(cfg))
		flags |= FLOW_SAMPLED;
	else if (!((flags & FLOW_NEW) && (cfg_flags & CFG_TRACE_NEW)))
		return done(skb, dir, proxy_port);
	if (!have_peer)
		lookup_peer(&p, peer_addr, &peer_id, &peer_cluster);
	emit(skb, &p, dir, ep, cfg, peer_id, peer_cluster,
	     (struct verdict){.kind = KIND_TRACE,
			      .verdict = audited ? VERDICT_AUDIT : proxy_port ? VERDICT_REDIRECTED : VERDICT_FORWARDED,
			      .flags = flags, .proxy_port = proxy_port});
	return done(skb, dir, proxy_port);
}

SEC("tc")
int cm_policy_from_ep(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

SEC("tc")
int cm_policy_to_ep(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

/* The baseline of the figures: an empty program. */
SEC("tc")
int cm_policy_empty(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

char __license[] SEC("license") = "Dual BSD/GPL";
