package socklb

// Binary layout of the socket load balancer's own maps (bpf/socklb.c),
// pinned beside the mesh maps of package datapath (whose cm_services and
// cm_backends the programs read; datapath/layout.go). Native-endian except
// the ports (network byte order).
//
//	/* cm_sock_revnat: BPF_MAP_TYPE_LRU_HASH, max_entries =
//	 * Config.MaxSockRevNAT (default 131072). Written by sendmsg4/6 for
//	 * every datagram sent to a frontend (unless already there), read by
//	 * recvmsg4/6. */
//	struct cm_sock_revnat_key {      /* 32 bytes */
//		__u64 cookie;                /* bpf_get_socket_cookie() */
//		__u8  addr[16];              /* backend, as the socket sees it: an
//		                              * IPv4 backend of an AF_INET6 socket
//		                              * is ::ffff:a.b.c.d */
//		__be16 port;                 /* backend port */
//		__u8  family;                /* the socket's: 4 or 6 */
//		__u8  pad[5];
//	};
//	struct cm_sock_revnat_value {    /* 20 bytes */
//		__u8  addr[16];              /* frontend, as the socket gave it */
//		__be16 port;
//		__u8  family;                /* the socket's: 4 or 6 */
//		__u8  pad;
//	};
//
//	/* cm_sock_peer: BPF_MAP_TYPE_SK_STORAGE, BPF_F_NO_PREALLOC (one value
//	 * per socket, freed with it). Written by connect4/6, deleted when the
//	 * socket connects again to an address that is no frontend, read by
//	 * getpeername4/6 and recvmsg4/6. */
//	struct cm_sock_peer {            /* 40 bytes */
//		struct cm_sock_revnat_value frontend;
//		__u8  backend[16];           /* as the socket sees it */
//		__be16 backend_port;
//		__u16 pad;
//	};
//
//	/* cm_sock_events: BPF_MAP_TYPE_RINGBUF of Config.EventRingBytes
//	 * (default 1 MiB), records of struct cm_sock_event (128 bytes; layout:
//	 * datapath/flows/layout.go): one per translated connect, and per
//	 * datagram whose cm_sock_revnat entry is new.
//	 * cm_sock_metrics: BPF_MAP_TYPE_PERCPU_ARRAY of 16 __u64: 0 connects
//	 * translated, 1 datagrams translated, 2 refused (no backend), 6 events
//	 * written, 7 events lost (the ring buffer was full); the rest
//	 * reserved. */

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/clustermesh/clustermesh/datapath"
)

// Names, inside the mesh maps' pin directory (datapath.Config.PinDir), of
// the socket load balancer's own maps: the reverse translation of
// datagrams (an LRU hash keyed by socket cookie and backend) and of
// connected sockets (socket-local storage). The first Attach creates them;
// they are kept across agent restarts, so that sockets translated by a
// previous run still see the service address as their peer.
const (
	RevNATMapName = "cm_sock_revnat"
	PeerMapName   = "cm_sock_peer"
	// EventsMapName is the ring buffer of translation events, read by
	// LB.OpenEvents; MetricsMapName its counters (ReadCounters).
	EventsMapName  = "cm_sock_events"
	MetricsMapName = "cm_sock_metrics"
)

// mapNames lists the pinned maps (RemovePins).
var mapNames = []string{RevNATMapName, PeerMapName, EventsMapName, MetricsMapName}

// Defaults of Config's fields.
const (
	DefaultMaxSockRevNAT  = 128 * 1024
	DefaultEventRingBytes = 1 << 20
)

// Config sizes the socket load balancer's maps. A zero field takes its
// default. The size is part of the map's definition: changing it makes the
// existing pin incompatible (remove it, or the pin directory).
type Config struct {
	// MaxSockRevNAT is the max_entries of the reverse-translation LRU for
	// datagrams (RevNATMapName): one entry per unconnected UDP socket and
	// backend its sendto reached (connected sockets keep theirs in socket
	// storage).
	MaxSockRevNAT uint32
	// EventRingBytes is the size of the translation events' ring buffer
	// (EventsMapName): a power of two, at least a page; an event takes 136
	// bytes.
	EventRingBytes uint32
}

var sizeOptions = []datapath.SizeOption[Config]{
	{Flag: "max-sock-revnat-entries", Field: "MaxSockRevNAT", Map: RevNATMapName, Unit: "entries",
		Default: DefaultMaxSockRevNAT, Min: 1, Max: 1 << 24,
		Usage: "max_entries of the socket load balancer's UDP reverse-translation LRU (" + RevNATMapName + ")",
		Of:    func(c *Config) *uint32 { return &c.MaxSockRevNAT }},
	{Flag: "sock-event-ring-bytes", Field: "EventRingBytes", Map: EventsMapName, Unit: "bytes",
		Default: DefaultEventRingBytes, Min: 4096, Max: 1 << 30,
		Usage: "size of the socket load balancer's translation events' ring buffer (" + EventsMapName + "): a power of two of at least a page; an event takes 136 bytes",
		Of:    func(c *Config) *uint32 { return &c.EventRingBytes }},
}

// SizeOptions lists the sizes of Config, for the agent to register its
// flags from (see datapath.SizeOptions).
func SizeOptions() []datapath.SizeOption[Config] { return slices.Clone(sizeOptions) }

// sizes tells bpfmap's errors which option sizes a map.
func sizes(name string) (option, unit string, ok bool) {
	o, ok := datapath.SizeOptionOf(sizeOptions, name)
	return o.String(), o.Unit, ok
}

func (c Config) withDefaults() Config {
	datapath.DefaultSizes(sizeOptions, &c)
	return c
}

// Validate reports whether c, with its defaults applied, is usable. Its
// errors wrap datapath.ErrInvalidConfig and name the option to change.
func (c Config) Validate() error {
	c = c.withDefaults()
	errs := []error{datapath.CheckSizes(sizeOptions, &c)}
	if page := uint32(os.Getpagesize()); c.EventRingBytes < page || c.EventRingBytes&(c.EventRingBytes-1) != 0 {
		o, _ := datapath.SizeOptionOf(sizeOptions, EventsMapName)
		errs = append(errs, fmt.Errorf("map size %s is %d: %w: want a power of two of at least a page (%d bytes)",
			o, c.EventRingBytes, datapath.ErrInvalidConfig, page))
	}
	return errors.Join(errs...)
}
