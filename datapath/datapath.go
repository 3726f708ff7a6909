// Package datapath owns the eBPF maps that carry the mesh into the kernel: the
// ipcache (prefix → security identity, tunnel endpoint, cluster id), the service
// map (frontend → selected backend slots) and the backend map (backend id →
// address). It writes them by idempotent update, delete and prune, pins them
// under a bpffs directory so that they outlive the agent, and knows nothing of
// etcd or of where the desired state comes from.
//
// Two implementations share the Datapath interface: Maps, the real eBPF maps,
// and Memory, an in-memory stand-in used only when the process lacks the
// privileges for eBPF (Open says so loudly when it falls back).
//
// Programs that read the maps get them through Maps.Handles, each in a
// package of its own with its own maps, lock and pins: the socket load
// balancer (datapath/socklb) and network policy on each local endpoint's
// host-side veth (datapath/tcpolicy), whose flow events package
// datapath/flows decodes. Whoever composes an agent removes each package's
// pins (RemovePins of each).
//
// Its surface (about 40 names, 80 with their methods) is larger than one
// concept's because Maps and Memory each carry every method of Datapath,
// and because the vocabulary all the datapath packages share lives here,
// so that none of them imports another for it: Protocol, Direction,
// IdentityWorld, SizeOption, and the sentinel errors they wrap.
package datapath

import (
	"fmt"
	"net/netip"
)

// Protocol is an IP protocol number as carried in the service and backend maps.
type Protocol uint8

// Protocols a service port can carry.
const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

// String returns the protocol's conventional upper-case name.
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// ParseProtocol parses "TCP", "UDP" or "SCTP" (any case); empty means TCP.
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "", "TCP", "tcp":
		return TCP, nil
	case "UDP", "udp":
		return UDP, nil
	case "SCTP", "sctp":
		return SCTP, nil
	}
	return 0, fmt.Errorf("datapath: unknown protocol %q (want TCP, UDP or SCTP)", s)
}

// Direction is the direction of traffic relative to a local endpoint, with
// the values of package policy: Ingress is traffic to the endpoint, Egress
// traffic from it. The policy keys (datapath/tcpolicy) and the flow events
// (datapath/flows) share it.
type Direction uint8

// The two directions.
const (
	Ingress Direction = 0
	Egress  Direction = 1
)

func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// IdentityWorld is the identity the programs that read the ipcache give an
// address it does not know (Cilium's reserved "world").
const IdentityWorld uint32 = 2

// IPCacheEntry is what the datapath knows of an address: who it is (its
// security identity), where it lives (the node to tunnel to; invalid when the
// address is local or unknown) and which cluster it belongs to.
type IPCacheEntry struct {
	Identity       uint32
	TunnelEndpoint netip.Addr
	ClusterID      uint16
}

// Frontend is the address a client dials: a service's ClusterIP and port.
type Frontend struct {
	Addr     netip.Addr
	Port     uint16
	Protocol Protocol
}

func (f Frontend) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.Addr, f.Port), f.Protocol)
}

// Backend is one endpoint traffic for a frontend may be sent to.
type Backend struct {
	Addr      netip.Addr
	Port      uint16
	Protocol  Protocol
	ClusterID uint16
}

func (b Backend) String() string {
	return fmt.Sprintf("%s/%s@%d", netip.AddrPortFrom(b.Addr, b.Port), b.Protocol, b.ClusterID)
}

// Writer changes the datapath. Every method is idempotent: writing what is
// already there is a no-op that succeeds, deleting what is absent succeeds.
type Writer interface {
	// UpsertIPCache maps prefix (a single address is a /32 or /128) to e.
	UpsertIPCache(prefix netip.Prefix, e IPCacheEntry) error
	// DeleteIPCache removes prefix.
	DeleteIPCache(prefix netip.Prefix) error
	// UpsertService sets the backends selected for f, in slot order. A backend
	// listed n times gets n slots (a weight). An empty list keeps the frontend
	// with zero slots (traffic to it finds no backend).
	UpsertService(f Frontend, backends []Backend) error
	// DeleteService removes f and releases backends no other service uses.
	DeleteService(f Frontend) error
}

// Reader dumps what the datapath holds, as written (for prune, status, tests).
type Reader interface {
	IPCache() (map[netip.Prefix]IPCacheEntry, error)
	Services() (map[Frontend][]Backend, error)
	// LookupIPCache is the entry of the longest prefix holding addr (the
	// identity the programs see for it); false when none does.
	LookupIPCache(addr netip.Addr) (IPCacheEntry, bool)
}

// Datapath is a Writer and Reader over one agent's maps.
type Datapath interface {
	Writer
	Reader
	// Kind is "ebpf" for the real maps, "memory" for the in-memory stand-in.
	Kind() string
	// Close releases file descriptors; pinned maps stay in the kernel.
	Close() error
}

// BatchWriter is implemented by datapaths that can write many ipcache entries
// at once (both Maps and Memory do); the initial sync type-asserts it.
// Prefixes[i] maps to entries[i]; the whole batch is validated before
// anything is written.
type BatchWriter interface {
	UpsertIPCacheBatch(prefixes []netip.Prefix, entries []IPCacheEntry) error
}
