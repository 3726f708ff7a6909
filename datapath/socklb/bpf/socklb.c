// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * clustermesh socket load balancer: cgroup sock_addr programs that translate
 * a service frontend (ClusterIP:port) into one of its backends when a socket
 * connects or sends, and translate the backend back into the frontend when a
 * UDP socket receives or any socket asks for its peer.
 *
 *   connect4/6     TCP and connected UDP: pick a backend, rewrite the
 *                  destination, remember the translation in the socket's
 *                  storage (cm_sock_peer).
 *   sendmsg4/6     unconnected UDP (sendto with an address): the same, per
 *                  datagram, remembered in cm_sock_revnat (socket cookie +
 *                  backend → frontend).
 *   recvmsg4/6     UDP: a datagram from a backend this socket was sent to
 *                  appears to come from the frontend.
 *   getpeername4/6 a connected socket's peer reads as the frontend.
 *
 * Maps: cm_services and cm_backends are the agent's pinned maps (see
 * datapath/layout.go; the Go loader replaces these definitions with the live
 * maps, so max_entries here is a placeholder). cm_sock_revnat (LRU hash) and
 * cm_sock_peer (socket storage, freed with the socket) are this program's
 * own, pinned beside them.
 *
 * A frontend whose master entry counts zero slots (a service with no
 * backend) refuses the connect or send with ECONNREFUSED (bpf_set_retval,
 * kernel >= 5.18): without a rewrite the client would wait for a SYN-ACK
 * from an address nobody answers for.
 *
 * Every translation of a connect, and of a datagram whose reverse entry is
 * new (the first datagram of a socket to a backend), is reported in
 * cm_sock_events (struct cm_sock_event: the service, the backend, the
 * socket's bound source, cookie, network namespace cookie and cgroup);
 * events the ring buffer cannot take are counted (CNT_EVENTS_LOST of
 * cm_sock_metrics, the policy programs' slot).
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ECONNREFUSED 111

/* Return values of cgroup sock_addr programs. */
#define SYS_REJECT 0
#define SYS_PROCEED 1

#define FAMILY4 4
#define FAMILY6 6

/* How many times a selection is retried when the slot or backend it picked
 * vanished under a concurrent shrink (the writer drops the count first, so a
 * fresh pick sees the new count). */
#define SELECT_TRIES 3

/* The flow event's constants (datapath/flows/layout.go). */
#define DIR_EGRESS 1
#define VERDICT_TRANSLATED 7
#define KIND_SOCK_TRANSLATE 7
#define XLATE_POST_FWD 2

/* Counters (cm_sock_metrics, per CPU); 6 and 7 as the policy programs'. */
#define CNT_XLATE_CONNECT 0
#define CNT_XLATE_SENDMSG 1
#define CNT_REFUSED 2
#define CNT_EVENTS 6
#define CNT_EVENTS_LOST 7
#define CNT_MAX 16

/* Layouts of datapath/layout.go; addresses as 4 words (same bytes as
 * __u8 addr[16]; IPv4 in the first word). */
struct cm_service_key {
	__u32 addr[4];
	__be16 port;
	__u8 proto;
	__u8 family;
	__u16 slot;
	__u16 pad;
};

struct cm_service_value {
	__u32 backend_id;
	__u16 count;
	__u16 flags;
};

struct cm_backend {
	__u32 addr[4];
	__be16 port;
	__u8 proto;
	__u8 family;
	__u16 cluster_id;
	__u16 flags;
};

/* Reverse translation, keyed by socket and by the backend as the socket
 * sees it (an IPv4 backend of an IPv6 socket in v4-mapped form, family 6). */
struct cm_sock_revnat_key {
	__u64 cookie;   /* bpf_get_socket_cookie */
	__u32 addr[4];  /* backend address */
	__be16 port;    /* backend port */
	__u8 family;    /* 4: AF_INET socket, 6: AF_INET6 socket */
	__u8 pad[5];
};

struct cm_sock_revnat_value {
	__u32 addr[4];  /* frontend address, as the socket gave it */
	__be16 port;    /* frontend port */
	__u8 family;
	__u8 pad;
};

/* struct cm_flow_event of bpf/policy.c (datapath/tcpolicy), then the
 * socket's. */
struct cm_sock_event {
	__u64 timestamp;
	__u32 src_addr[4];  /* the socket's bound address, or zero */
	__u32 dst_addr[4];  /* the backend, as the socket sees it */
	__u32 src_identity; /* 0 */
	__u32 dst_identity; /* 0 */
	__u32 ifindex;      /* 0 */
	__u32 len;          /* 0 */
	__u32 sample_rate;  /* 0 */
	__be16 src_port;
	__be16 dst_port;
	__u16 src_cluster;  /* 0 */
	__u16 dst_cluster;  /* the backend's */
	__u8 family;        /* the socket's */
	__u8 proto;
	__u8 verdict;       /* VERDICT_TRANSLATED */
	__u8 reason;        /* 0 */
	__u8 direction;     /* DIR_EGRESS */
	__u8 flags;         /* 0 */
	__u8 kind;          /* KIND_SOCK_TRANSLATE */
	__u8 tcp_flags;     /* 0 */
	__u8 match_type;    /* 0 */
	__u8 xlate_point;   /* XLATE_POST_FWD */
	__u16 pad;
	__u64 sock_cookie;
	__u64 netns_cookie;
	__u64 cgroup_id;
	__u32 service_addr[4]; /* as the socket gave it */
	__be16 service_port;
	__u8 pad2[6];
};

#define CHECK_OFF(f, off) _Static_assert(__builtin_offsetof(struct cm_sock_event, f) == off, #f)
CHECK_OFF(src_addr, 8);
CHECK_OFF(dst_addr, 24);
CHECK_OFF(src_port, 60);
CHECK_OFF(dst_cluster, 66);
CHECK_OFF(family, 68);
CHECK_OFF(verdict, 70);
CHECK_OFF(direction, 72);
CHECK_OFF(kind, 74);
CHECK_OFF(xlate_point, 77);
CHECK_OFF(sock_cookie, 80);
CHECK_OFF(netns_cookie, 88);
CHECK_OFF(cgroup_id, 96);
CHECK_OFF(service_addr, 104);
CHECK_OFF(service_port, 120);
_Static_assert(sizeof(struct cm_sock_event) == 128, "cm_sock_event size");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_sock_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, CNT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_sock_metrics SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct cm_service_key);
	__type(value, struct cm_service_value);
	__uint(max_entries, 1);
} cm_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct cm_backend);
	__uint(max_entries, 1);
} cm_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct cm_sock_revnat_key);
	__type(value, struct cm_sock_revnat_value);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_sock_revnat SEC(".maps");

/* The translation of a connected socket (connect4/6), in the socket's own
 * storage: freed with the socket, never evicted. */
struct cm_sock_peer {
	struct cm_sock_revnat_value frontend;
	__u32 backend[4];
	__be16 backend_port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct cm_sock_peer);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_sock_peer SEC(".maps");

enum lb_result {
	LB_NOT_SERVICE,  /* no master entry: leave the address alone */
	LB_NO_BACKEND,   /* a service without a usable backend: refuse */
	LB_BACKEND,      /* *out is the selected backend */
};

/* lb_select looks key's frontend up and picks a slot uniformly at random
 * (a backend listed n times is n times as likely). key->slot is clobbered. */
static __always_inline enum lb_result lb_select(struct cm_service_key *key, struct cm_backend **out)
{
	struct cm_service_value *master, *slot;
	struct cm_backend *b;
	int i;

#pragma unroll
	for (i = 0; i < SELECT_TRIES; i++) {
		__u16 count;

		key->slot = 0;
		master = bpf_map_lookup_elem(&cm_services, key);
		if (!master)
			return i == 0 ? LB_NOT_SERVICE : LB_NO_BACKEND;
		count = master->count;
		if (count == 0)
			return LB_NO_BACKEND;
		key->slot = (bpf_get_prandom_u32() % count) + 1;
		slot = bpf_map_lookup_elem(&cm_services, key);
		if (!slot)
			continue;
		b = bpf_map_lookup_elem(&cm_backends, &slot->backend_id);
		if (!b)
			continue;
		*out = b;
		return LB_BACKEND;
	}
	return LB_NO_BACKEND;
}

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&cm_sock_metrics, &idx);

	if (c)
		*c += 1;
}

static __always_inline int refuse(void)
{
	count(CNT_REFUSED);
	bpf_set_retval(-ECONNREFUSED);
	return SYS_REJECT;
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

/* report writes the event of a translation: rk is the backend and rv the
 * frontend, as the socket sees them. */
static __always_inline void report(struct bpf_sock_addr *ctx, const struct cm_sock_revnat_key *rk,
				   const struct cm_sock_revnat_value *rv, __u16 cluster)
{
	struct bpf_sock *sk = ctx->sk;
	struct cm_sock_event *e = bpf_ringbuf_reserve(&cm_sock_events, sizeof(*e), 0);

	if (!e) {
		count(CNT_EVENTS_LOST);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->timestamp = bpf_ktime_get_ns();
	if (sk) {
		if (rk->family == FAMILY4) {
			e->src_addr[0] = sk->src_ip4;
		} else {
			e->src_addr[0] = sk->src_ip6[0];
			e->src_addr[1] = sk->src_ip6[1];
			e->src_addr[2] = sk->src_ip6[2];
			e->src_addr[3] = sk->src_ip6[3];
		}
		e->src_port = bpf_htons((__u16)sk->src_port);
	}
	__builtin_memcpy(e->dst_addr, rk->addr, 16);
	e->dst_port = rk->port;
	e->dst_cluster = cluster;
	e->family = rk->family;
	e->proto = (__u8)ctx->protocol;
	e->verdict = VERDICT_TRANSLATED;
	e->direction = DIR_EGRESS;
	e->kind = KIND_SOCK_TRANSLATE;
	e->xlate_point = XLATE_POST_FWD;
	e->sock_cookie = bpf_get_socket_cookie(ctx);
	e->netns_cookie = bpf_get_netns_cookie(ctx);
	e->cgroup_id = bpf_get_current_cgroup_id();
	__builtin_memcpy(e->service_addr, rv->addr, 16);
	e->service_port = rv->port;
	bpf_ringbuf_submit(e, wakeup(&cm_sock_events));
	count(CNT_EVENTS);
}

/* remember records the translation for the reverse path: a connected
 * socket (connect) in its own storage, a datagram (sendmsg) in the LRU keyed
 * by socket cookie and backend, where an identical entry is not rewritten.
 * It returns whether the translation is news (every connect; a datagram
 * whose entry was not there). */
static __always_inline int remember(struct bpf_sock_addr *ctx, int per_datagram, struct cm_sock_revnat_key *rk,
				    struct cm_sock_revnat_value *rv)
{
	if (!per_datagram) {
		struct bpf_sock *sk = ctx->sk;
		struct cm_sock_peer *p;

		if (!sk)
			return 1;
		p = bpf_sk_storage_get(&cm_sock_peer, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!p)
			return 1;
		p->frontend = *rv;
		p->backend[0] = rk->addr[0];
		p->backend[1] = rk->addr[1];
		p->backend[2] = rk->addr[2];
		p->backend[3] = rk->addr[3];
		p->backend_port = rk->port;
		return 1;
	}
	rk->cookie = bpf_get_socket_cookie(ctx);
	{
		struct cm_sock_revnat_value *old = bpf_map_lookup_elem(&cm_sock_revnat, rk);

		if (old && old->addr[0] == rv->addr[0] && old->addr[1] == rv->addr[1] &&
		    old->addr[2] == rv->addr[2] && old->addr[3] == rv->addr[3] &&
		    old->port == rv->port && old->family == rv->family)
			return 0;
	}
	bpf_map_update_elem(&cm_sock_revnat, rk, rv, BPF_ANY);
	return 1;
}

/* not_service lets a connect or datagram to an address that is no frontend
 * through; a socket re-connected (UDP) away from a service forgets its
 * translation. */
static __always_inline int not_service(struct bpf_sock_addr *ctx, int per_datagram)
{
	if (!per_datagram && ctx->sk)
		bpf_sk_storage_delete(&cm_sock_peer, ctx->sk);
	return SYS_PROCEED;
}

static __always_inline int xlate4(struct bpf_sock_addr *ctx, int per_datagram)
{
	struct cm_service_key key = {};
	struct cm_sock_revnat_key rk = {};
	struct cm_sock_revnat_value rv = {};
	struct cm_backend *b = 0;
	__u32 ip4 = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;

	key.addr[0] = ip4;
	key.port = port;
	key.proto = (__u8)ctx->protocol;
	key.family = FAMILY4;
	switch (lb_select(&key, &b)) {
	case LB_NOT_SERVICE:
		return not_service(ctx, per_datagram);
	case LB_NO_BACKEND:
		return refuse();
	case LB_BACKEND:
		break;
	}
	if (!b || b->family != FAMILY4)
		return refuse(); /* an AF_INET socket cannot reach an IPv6 backend */

	rk.addr[0] = b->addr[0];
	rk.port = b->port;
	rk.family = FAMILY4;
	rv.addr[0] = ip4;
	rv.port = port;
	rv.family = FAMILY4;
	count(per_datagram ? CNT_XLATE_SENDMSG : CNT_XLATE_CONNECT);
	if (remember(ctx, per_datagram, &rk, &rv))
		report(ctx, &rk, &rv, b->cluster_id);

	ctx->user_ip4 = b->addr[0];
	ctx->user_port = (__u32)b->port;
	return SYS_PROCEED;
}

static __always_inline int is_v4mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int xlate6(struct bpf_sock_addr *ctx, int per_datagram)
{
	struct cm_service_key key = {};
	struct cm_sock_revnat_key rk = {};
	struct cm_sock_revnat_value rv = {};
	struct cm_backend *b = 0;
	__u32 ip6[4];
	__be16 port = (__be16)ctx->user_port;

	ip6[0] = ctx->user_ip6[0];
	ip6[1] = ctx->user_ip6[1];
	ip6[2] = ctx->user_ip6[2];
	ip6[3] = ctx->user_ip6[3];

	key.port = port;
	key.proto = (__u8)ctx->protocol;
	if (is_v4mapped(ip6)) {
		/* A dual-stack socket dialling ::ffff:a.b.c.d reaches IPv4 services. */
		key.addr[0] = ip6[3];
		key.family = FAMILY4;
	} else {
		key.addr[0] = ip6[0];
		key.addr[1] = ip6[1];
		key.addr[2] = ip6[2];
		key.addr[3] = ip6[3];
		key.family = FAMILY6;
	}
	switch (lb_select(&key, &b)) {
	case LB_NOT_SERVICE:
		return not_service(ctx, per_datagram);
	case LB_NO_BACKEND:
		return refuse();
	case LB_BACKEND:
		break;
	}
	if (!b)
		return refuse();
	if (b->family == FAMILY4) {
		/* v4-mapped: works unless the socket is IPV6_V6ONLY, in which case
		 * the kernel refuses the connect itself. */
		rk.addr[2] = bpf_htonl(0x0000ffff);
		rk.addr[3] = b->addr[0];
	} else if (b->family == FAMILY6) {
		rk.addr[0] = b->addr[0];
		rk.addr[1] = b->addr[1];
		rk.addr[2] = b->addr[2];
		rk.addr[3] = b->addr[3];
	} else {
		return refuse();
	}
	rk.port = b->port;
	rk.family = FAMILY6;
	rv.addr[0] = ip6[0];
	rv.addr[1] = ip6[1];
	rv.addr[2] = ip6[2];
	rv.addr[3] = ip6[3];
	rv.port = port;
	rv.family = FAMILY6;
	count(per_datagram ? CNT_XLATE_SENDMSG : CNT_XLATE_CONNECT);
	if (remember(ctx, per_datagram, &rk, &rv))
		report(ctx, &rk, &rv, b->cluster_id);

	ctx->user_ip6[0] = rk.addr[0];
	ctx->user_ip6[1] = rk.addr[1];
	ctx->user_ip6[2] = rk.addr[2];
	ctx->user_ip6[3] = rk.addr[3];
	ctx->user_port = (__u32)b->port;
	return SYS_PROCEED;
}

/* peer_of returns the translation of a connected socket whose peer is
 * addr:port (as the socket sees it), or NULL. */
static __always_inline struct cm_sock_peer *peer_of(struct bpf_sock_addr *ctx, const __u32 *addr, __be16 port,
						   __u8 family)
{
	struct cm_sock_peer *p;

	if (!ctx->sk)
		return 0;
	p = bpf_sk_storage_get(&cm_sock_peer, ctx->sk, 0, 0);
	if (!p || p->frontend.family != family || p->backend_port != port || p->backend[0] != addr[0] ||
	    p->backend[1] != addr[1] || p->backend[2] != addr[2] || p->backend[3] != addr[3])
		return 0;
	return p;
}

/* revnat4 rewrites the peer address of ctx (getpeername, or the source of
 * a datagram) from a backend to its frontend; datagrams also look in the
 * per-datagram LRU. */
static __always_inline void revnat4(struct bpf_sock_addr *ctx, int datagram)
{
	struct cm_sock_revnat_key rk = {};
	struct cm_sock_revnat_value *rv;
	struct cm_sock_peer *p;

	rk.addr[0] = ctx->user_ip4;
	rk.port = (__be16)ctx->user_port;
	rk.family = FAMILY4;
	p = peer_of(ctx, rk.addr, rk.port, FAMILY4);
	if (p) {
		rv = &p->frontend;
	} else {
		if (!datagram)
			return;
		rk.cookie = bpf_get_socket_cookie(ctx);
		rv = bpf_map_lookup_elem(&cm_sock_revnat, &rk);
		if (!rv)
			return;
	}
	ctx->user_ip4 = rv->addr[0];
	ctx->user_port = (__u32)rv->port;
}

static __always_inline void revnat6(struct bpf_sock_addr *ctx, int datagram)
{
	struct cm_sock_revnat_key rk = {};
	struct cm_sock_revnat_value *rv;
	struct cm_sock_peer *p;

	rk.addr[0] = ctx->user_ip6[0];
	rk.addr[1] = ctx->user_ip6[1];
	rk.addr[2] = ctx->user_ip6[2];
	rk.addr[3] = ctx->user_ip6[3];
	rk.port = (__be16)ctx->user_port;
	rk.family = FAMILY6;
	p = peer_of(ctx, rk.addr, rk.port, FAMILY6);
	if (p) {
		rv = &p->frontend;
	} else {
		if (!datagram)
			return;
		rk.cookie = bpf_get_socket_cookie(ctx);
		rv = bpf_map_lookup_elem(&cm_sock_revnat, &rk);
		if (!rv)
			return;
	}
	ctx->user_ip6[0] = rv->addr[0];
	ctx->user_ip6[1] = rv->addr[1];
	ctx->user_ip6[2] = rv->addr[2];
	ctx->user_ip6[3] = rv->addr[3];
	ctx->user_port = (__u32)rv->port;
}

SEC("cgroup/connect4")
int cm_sock4_connect(struct bpf_sock_addr *ctx)
{
	return xlate4(ctx, 0);
}

SEC("cgroup/connect6")
int cm_sock6_connect(struct bpf_sock_addr *ctx)
{
	return xlate6(ctx, 0);
}

SEC("cgroup/sendmsg4")
int cm_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return xlate4(ctx, 1);
}

SEC("cgroup/sendmsg6")
int cm_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return xlate6(ctx, 1);
}

/* recvmsg and getpeername programs must return 1. */

SEC("cgroup/recvmsg4")
int cm_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	revnat4(ctx, 1);
	return SYS_PROCEED;
}

SEC("cgroup/recvmsg6")
int cm_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	revnat6(ctx, 1);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int cm_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	revnat4(ctx, 0);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int cm_sock6_getpeername(struct bpf_sock_addr *ctx)
{
	revnat6(ctx, 0);
	return SYS_PROCEED;
}

char __license[] SEC("license") = "Dual BSD/GPL";
