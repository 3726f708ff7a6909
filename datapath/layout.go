package datapath

// Binary layout of the pinned maps: the contract with the C programs that read
// them. Every struct is native-endian except the ports, which are stored in
// network byte order (as they appear in packet headers). None of the structs
// has implicit padding; the explicit Pad fields are always zero. IPv4
// addresses occupy the first 4 bytes of a 16-byte address, the rest zero.
//
//	/* cm_ipcache: BPF_MAP_TYPE_LPM_TRIE, BPF_F_NO_PREALLOC,
//	 * max_entries = Config.MaxIPCache (default 524288). */
//	struct cm_ipcache_key {          /* 24 bytes */
//		__u32 prefixlen;             /* 32 + prefix bits: the first 32 bits
//		                              * cover family and pad */
//		__u8  family;                /* 4 or 6 */
//		__u8  pad[3];
//		__u8  addr[16];              /* IPv4 in addr[0..3] */
//	};
//	struct cm_ipcache_value {        /* 24 bytes */
//		__u32 identity;              /* security identity */
//		__u8  tunnel_endpoint[16];   /* node to tunnel to; IPv4 in [0..3] */
//		__u16 cluster_id;
//		__u8  tunnel_family;         /* 0 none (local/unknown), 4 or 6 */
//		__u8  pad;
//	};
//
//	/* cm_services: BPF_MAP_TYPE_HASH, max_entries = Config.MaxServiceSlots
//	 * (default 262144; one entry per master plus one per backend slot). */
//	struct cm_service_key {          /* 24 bytes */
//		__u8  addr[16];              /* frontend address */
//		__be16 port;                 /* frontend port, network byte order */
//		__u8  proto;                 /* IPPROTO_TCP, _UDP, _SCTP */
//		__u8  family;                /* 4 or 6 */
//		__u16 slot;                  /* 0: master; 1..count: backend slots */
//		__u16 pad;
//	};
//	struct cm_service_value {        /* 8 bytes */
//		__u32 backend_id;            /* slot > 0: id in cm_backends; master: 0 */
//		__u16 count;                 /* master: number of slots; slot > 0: 0 */
//		__u16 flags;                 /* reserved, 0 */
//	};
//
//	/* cm_backends: BPF_MAP_TYPE_HASH, key __u32 backend id (ids start at
//	 * 1; 0 means none), max_entries = Config.MaxBackends (default 131072). */
//	struct cm_backend {              /* 24 bytes */
//		__u8  addr[16];
//		__be16 port;                 /* network byte order */
//		__u8  proto;
//		__u8  family;                /* 4 or 6 */
//		__u16 cluster_id;
//		__u16 flags;                 /* reserved, 0 */
//	};
//
// A reader selects a backend by looking up the master (slot 0), picking
// slot = 1 + hash % count when count > 0, looking up that slot and then the
// backend by id. The writer keeps that walk safe at every instant: backends
// are written before the slots that point at them, slots before the count
// that exposes them, and on shrink the count drops before the surplus slots
// and unreferenced backends are deleted.
//
// The socket load balancer (package datapath/socklb) is such a reader: its
// connect and sendmsg programs pick the slot with bpf_get_prandom_u32() %
// count + 1, retry twice when a concurrent shrink removed the slot or
// backend they picked, and refuse (ECONNREFUSED) a frontend whose count is
// 0. The policy programs (package datapath/tcpolicy) read the ipcache.

import (
	"net/netip"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Names of the pinned maps inside Config.PinDir.
const (
	IPCacheMapName  = "cm_ipcache"
	ServicesMapName = "cm_services"
	BackendsMapName = "cm_backends"
)

// ipcacheKey is struct cm_ipcache_key.
type ipcacheKey struct {
	PrefixLen uint32
	Family    uint8
	Pad       [3]uint8
	Addr      [16]byte
}

// ipcacheValue is struct cm_ipcache_value.
type ipcacheValue struct {
	Identity       uint32
	TunnelEndpoint [16]byte
	ClusterID      uint16
	TunnelFamily   uint8
	Pad            uint8
}

// serviceKey is struct cm_service_key.
type serviceKey struct {
	Addr   [16]byte
	Port   uint16 // network byte order
	Proto  uint8
	Family uint8
	Slot   uint16
	Pad    uint16
}

// serviceValue is struct cm_service_value.
type serviceValue struct {
	BackendID uint32
	Count     uint16
	Flags     uint16
}

// backendValue is struct cm_backend.
type backendValue struct {
	Addr      [16]byte
	Port      uint16 // network byte order
	Proto     uint8
	Family    uint8
	ClusterID uint16
	Flags     uint16
}

// Sizes of the structs above, checked by the tests against binary.Size.
const (
	ipcacheKeySize   = 24
	ipcacheValueSize = 24
	serviceKeySize   = 24
	serviceValueSize = 8
	backendIDSize    = 4
	backendValueSize = 24
)

// makeIPCacheKey encodes a normalised prefix.
func makeIPCacheKey(p netip.Prefix) ipcacheKey {
	addr, fam := bpfmap.EncodeAddr(p.Addr())
	return ipcacheKey{PrefixLen: 32 + uint32(p.Bits()), Family: fam, Addr: addr}
}

// prefix decodes the key; ok is false for a malformed key.
func (k ipcacheKey) prefix() (netip.Prefix, bool) {
	a := bpfmap.DecodeAddr(k.Addr, k.Family)
	if !a.IsValid() || k.PrefixLen < 32 {
		return netip.Prefix{}, false
	}
	p := netip.PrefixFrom(a, int(k.PrefixLen-32))
	return p, p.IsValid()
}

func makeIPCacheValue(e IPCacheEntry) ipcacheValue {
	v := ipcacheValue{Identity: e.Identity, ClusterID: e.ClusterID}
	if e.TunnelEndpoint.IsValid() {
		v.TunnelEndpoint, v.TunnelFamily = bpfmap.EncodeAddr(e.TunnelEndpoint)
	}
	return v
}

func (v ipcacheValue) entry() IPCacheEntry {
	return IPCacheEntry{
		Identity:       v.Identity,
		TunnelEndpoint: bpfmap.DecodeAddr(v.TunnelEndpoint, v.TunnelFamily),
		ClusterID:      v.ClusterID,
	}
}

func makeServiceKey(f Frontend, slot uint16) serviceKey {
	addr, fam := bpfmap.EncodeAddr(f.Addr)
	return serviceKey{Addr: addr, Port: bpfmap.Htons(f.Port), Proto: uint8(f.Protocol), Family: fam, Slot: slot}
}

func (k serviceKey) frontend() Frontend {
	return Frontend{Addr: bpfmap.DecodeAddr(k.Addr, k.Family), Port: bpfmap.Ntohs(k.Port), Protocol: Protocol(k.Proto)}
}

func makeBackendValue(b Backend) backendValue {
	addr, fam := bpfmap.EncodeAddr(b.Addr)
	return backendValue{Addr: addr, Port: bpfmap.Htons(b.Port), Proto: uint8(b.Protocol), Family: fam, ClusterID: b.ClusterID}
}

func (v backendValue) backend() Backend {
	return Backend{Addr: bpfmap.DecodeAddr(v.Addr, v.Family), Port: bpfmap.Ntohs(v.Port), Protocol: Protocol(v.Proto), ClusterID: v.ClusterID}
}
