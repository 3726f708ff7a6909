// Package flows is what the datapath's programs report: the policy
// programs' (package datapath/tcpolicy) flow events, one per dropped packet
// (KindDrop), per sampled or new forwarded one (KindTrace) and per policy
// decision (KindPolicyVerdict), and the socket load balancer's (package
// datapath/socklb) translations (KindSockTranslate); each read from its
// program's ring buffer by a Reader; and the policy programs' counters.
// Observability (package observe) consumes these types and nothing else of
// the datapath.
//
// The ring buffers, the counters and the flow configuration are maps of
// the programs' own objects: tcpolicy and socklb create, size, pin and
// remove them with their other maps; tcpolicy stores Config in the
// programs' configuration (one value with the policy revision, written
// under tcpolicy's lock); both open Readers (Programs.OpenFlows,
// LB.OpenEvents). This package decodes: the event's layout (layout.go),
// shared by both programs, the counters', and the Reader on handles of its
// own.
package flows

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/datapath"
)

// ErrShortEvent: Reader.Read got an event shorter than its kind's layout
// (layout.go); the event is skipped, the next Read goes on.
var ErrShortEvent = errors.New("short flow event")

// Verdict is what the datapath did with a packet or a socket.
type Verdict uint8

// Verdicts, with Hubble's numeric values (flow.Verdict).
const (
	VerdictForwarded Verdict = 1
	VerdictDropped   Verdict = 2
	// VerdictAudit: the policy denied the packet, and it passed because
	// its endpoint is in audit mode.
	VerdictAudit Verdict = 4
	// VerdictRedirected: the packet was sent to the agent's L7 proxy
	// (Flow.ProxyPort).
	VerdictRedirected Verdict = 5
	// VerdictTranslated: the socket load balancer sent a socket to a
	// backend of the service it asked for.
	VerdictTranslated Verdict = 7
)

func (v Verdict) String() string {
	switch v {
	case VerdictForwarded:
		return "FORWARDED"
	case VerdictDropped:
		return "DROPPED"
	case VerdictAudit:
		return "AUDIT"
	case VerdictRedirected:
		return "REDIRECTED"
	case VerdictTranslated:
		return "TRANSLATED"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// DropReason says why a packet was dropped.
type DropReason uint8

// Drop reasons.
const (
	// DropNone: the packet was forwarded.
	DropNone DropReason = 0
	// DropPolicyDenied: no entry of the policy map allows the flow in an
	// enforced direction.
	DropPolicyDenied DropReason = 1
	// DropInvalidPacket: a truncated or malformed IPv4 / IPv6 / L4 header
	// in an enforced direction.
	DropInvalidPacket DropReason = 2
	// DropProxyUnavailable: the policy entry sends the flow to an L7
	// proxy port nothing listens on (fail closed; Hubble's
	// SOCKET_LOOKUP_FAILED).
	DropProxyUnavailable DropReason = 3
)

func (r DropReason) String() string {
	switch r {
	case DropNone:
		return "none"
	case DropPolicyDenied:
		return "policy-denied"
	case DropInvalidPacket:
		return "invalid-packet"
	case DropProxyUnavailable:
		return "proxy-unavailable"
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Flow is one event of the datapath: a packet reported by the policy
// programs (every dropped one, forwarded ones and policy decisions as
// Config says), or a socket translated by the socket load balancer.
type Flow struct {
	Time time.Time
	// Kind says what the event reports. Events of a previous version's
	// programs have none: KindDrop or KindTrace by their verdict.
	Kind       Kind
	Verdict    Verdict
	DropReason DropReason
	// Direction is relative to the local endpoint: Egress when it sent
	// the packet (Src is the endpoint), Ingress when it receives it.
	Direction datapath.Direction
	// Ifindex is the endpoint's host-side interface.
	Ifindex  int
	Src, Dst netip.AddrPort // ports 0 for portless protocols and fragments
	Protocol datapath.Protocol
	// Identities and clusters: the endpoint's as the policy programs were
	// attached to it and Config.ClusterID, the peer's from the ipcache
	// (datapath.IdentityWorld and cluster 0 for an address it does not
	// know).
	SrcIdentity, DstIdentity uint32
	SrcCluster, DstCluster   uint16
	Bytes                    uint32 // packet length
	SampleRate               uint32 // Config.SampleRate when reported
	Reply                    bool   // a reply of a tracked flow (no policy lookup)
	New                      bool   // the packet created its flow's conntrack entry
	Sampled                  bool   // a forwarded packet reported by sampling
	Fragment                 bool   // a non-first fragment (no ports)
	// TCPFlags of a TCP packet (0 for other protocols and fragments).
	TCPFlags TCPFlags
	// MatchType of a policy-verdict event that allowed its packet: which
	// kind of policy entry did (MatchNone when denied or audited).
	MatchType MatchType
	// ProxyPort: the packet was sent to the L7 proxy listening on this
	// port (trace events say VerdictRedirected; 0: not redirected).
	ProxyPort uint16

	// A socket translation (KindSockTranslate): Dst is the backend the
	// socket was sent to (DstCluster its cluster), Service the frontend
	// it asked for, Src the socket's own address and port when it was
	// bound to an address (zero otherwise); Direction is Egress, Ifindex
	// and identities 0. IPv4 addresses of an IPv6 socket (v4-mapped) are
	// reported as IPv4. The agent names the socket's pod by NetnsCookie
	// (socklb.NetnsCookie in each pod's network namespace) or CgroupID
	// (socklb.CgroupID of each pod's cgroup).
	Service      netip.AddrPort
	XlatePoint   XlatePoint
	SocketCookie uint64 // bpf_get_socket_cookie
	NetnsCookie  uint64 // the socket's network namespace (SO_NETNS_COOKIE)
	CgroupID     uint64 // the calling process's cgroup v2 (its directory's inode)
}

// Config says which forwarded packets the policy programs report (dropped
// ones always are), whether they report policy decisions, and the local
// cluster id they report for local endpoints. The zero value reports no
// forwarded packet and no policy decision.
type Config struct {
	// SampleRate reports one in SampleRate forwarded packets (per CPU,
	// deterministic: every SampleRate-th); 1 reports all, 0 none.
	SampleRate uint32
	// TraceNew reports every packet that starts a flow (creates its
	// conntrack entry), sampled or not.
	TraceNew bool
	// PolicyVerdicts reports every policy decision of an enforced
	// direction that denies a packet, or allows (or audits) the first
	// packet of a connection (the one that creates its conntrack entry),
	// as a KindPolicyVerdict event with its MatchType: at most one per
	// connection allowed, one per packet denied, whatever SampleRate.
	PolicyVerdicts bool
	// ClusterID is the local cluster's id.
	ClusterID uint16
}

// Counters are the policy programs' packet and event counters, summed
// over CPUs, since the pinned counters were created. Arrays are indexed by
// datapath.Direction.
type Counters struct {
	Forwarded      [2]uint64
	DroppedPolicy  [2]uint64
	DroppedInvalid [2]uint64
	Events         uint64 // flow events written to the ring buffer
	EventsLost     uint64 // flow events the full ring buffer could not take
	FlowsCreated   uint64 // conntrack entries created
	// Audited: policy decisions that denied a packet of an endpoint in
	// audit mode, which let it pass.
	Audited [2]uint64
	// DroppedProxy: packets of a flow sent to an L7 proxy port nothing
	// listened on; Redirected: packets sent to an L7 proxy (not counted in
	// Forwarded).
	DroppedProxy [2]uint64
	Redirected   [2]uint64
}

// Dropped is every drop, both directions and reasons.
func (c Counters) Dropped() uint64 {
	return c.DroppedPolicy[0] + c.DroppedPolicy[1] + c.DroppedInvalid[0] + c.DroppedInvalid[1] +
		c.DroppedProxy[0] + c.DroppedProxy[1]
}

// ReadCounters reads the counters from the programs' per-CPU counter array
// (tcpolicy.MetricsMapName).
func ReadCounters(metrics *ebpf.Map) (Counters, error) {
	var c Counters
	sum := func(idx uint32) (uint64, error) {
		var per []uint64
		if err := metrics.Lookup(&idx, &per); err != nil {
			return 0, fmt.Errorf("datapath: read policy counter %d: %w", idx, err)
		}
		var s uint64
		for _, v := range per {
			s += v
		}
		return s, nil
	}
	for _, f := range []struct {
		idx uint32
		dst *uint64
	}{
		{counterForwardedIngress, &c.Forwarded[datapath.Ingress]},
		{counterForwardedEgress, &c.Forwarded[datapath.Egress]},
		{counterDroppedPolicyIngress, &c.DroppedPolicy[datapath.Ingress]},
		{counterDroppedPolicyEgress, &c.DroppedPolicy[datapath.Egress]},
		{counterDroppedInvalidIngress, &c.DroppedInvalid[datapath.Ingress]},
		{counterDroppedInvalidEgress, &c.DroppedInvalid[datapath.Egress]},
		{counterEvents, &c.Events},
		{counterEventsLost, &c.EventsLost},
		{counterCTCreated, &c.FlowsCreated},
		{counterAuditedIngress, &c.Audited[datapath.Ingress]},
		{counterAuditedEgress, &c.Audited[datapath.Egress]},
		{counterDroppedProxyIngress, &c.DroppedProxy[datapath.Ingress]},
		{counterDroppedProxyEgress, &c.DroppedProxy[datapath.Egress]},
		{counterRedirectedIngress, &c.Redirected[datapath.Ingress]},
		{counterRedirectedEgress, &c.Redirected[datapath.Egress]},
	} {
		v, err := sum(f.idx)
		if err != nil {
			return Counters{}, err
		}
		*f.dst = v
	}
	return c, nil
}

// Reader reads the events of one program's pinned ring buffer (the
// policy programs', or the socket load balancer's). It holds its own
// handles: closing what opened it does not stop it. Read one pin directory's flows with one Reader at a time (two
// would share the events between them). Read is not safe for concurrent
// use; Lost, Pending and Close are safe at any time.
type Reader struct {
	rd      *ringbuf.Reader
	ring    *ebpf.Map
	metrics *ebpf.Map
	rec     ringbuf.Record // Read's

	lostBase uint64

	offset    int64     // Read's: wall − monotonic, ns
	offsetAt  time.Time // Read's
	closeOnce sync.Once
	closeErr  error
}

// NewReader reads the events of ring, the programs' ring buffer
// (tcpolicy.FlowsMapName, socklb.EventsMapName), and counts those lost
// from metrics, their counter array (a per-CPU array of at least 16
// __u64 whose slots 6 and 7 count the events written and lost, as both
// programs' do). It takes both handles over: on error and on Close they
// are closed. Events written before it opened and not yet read by a
// previous reader are read first.
func NewReader(ring, metrics *ebpf.Map) (*Reader, error) {
	rd, err := ringbuf.NewReader(ring)
	if err != nil {
		ring.Close()
		metrics.Close()
		return nil, fmt.Errorf("datapath: open flows: %w", err)
	}
	r := &Reader{rd: rd, ring: ring, metrics: metrics}
	c, err := ReadCounters(metrics)
	if err != nil {
		r.Close()
		return nil, err
	}
	r.lostBase = c.EventsLost
	r.resync()
	return r, nil
}

// resync recomputes the offset between the monotonic clock of the events
// and the wall clock.
func (r *Reader) resync() {
	var ts unix.Timespec
	before := time.Now()
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	r.offset = before.UnixNano() - ts.Nano()
	r.offsetAt = before
}

func (r *Reader) wall(mono uint64) time.Time {
	return time.Unix(0, int64(mono)+r.offset)
}

// PollInterval is how often a Reader waiting for events looks at its ring
// buffer: the programs wake it only once a quarter of the ring is full
// (a wakeup costs microseconds on the packet's path), so an event waits up
// to this long before Read returns it.
const PollInterval = 50 * time.Millisecond

// Read returns the next flow, waiting for one until ctx is done (then it
// returns ctx's error). After Close it returns datapath.ErrClosed.
func (r *Reader) Read(ctx context.Context) (Flow, error) {
	if r.offsetAt.IsZero() || time.Since(r.offsetAt) > 10*time.Second {
		r.resync()
	}
	stop := context.AfterFunc(ctx, func() { r.rd.Flush() })
	defer stop()
	for {
		r.rd.SetDeadline(time.Now().Add(PollInterval))
		err := r.rd.ReadInto(&r.rec)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Nothing yet (events submitted without a wakeup are read
			// before this error is returned).
			if ctx.Err() != nil {
				return Flow{}, ctx.Err()
			}
		case err == nil:
			f, ok := decode(r.rec.RawSample, r.wall)
			if !ok {
				return Flow{}, fmt.Errorf("datapath: read flows: %w: event of %d bytes", ErrShortEvent, len(r.rec.RawSample))
			}
			return f, nil
		case errors.Is(err, ringbuf.ErrFlushed):
			if ctx.Err() != nil {
				return Flow{}, ctx.Err()
			}
			// A flush meant for an earlier call: read on.
		case errors.Is(err, ringbuf.ErrClosed), errors.Is(err, os.ErrClosed):
			return Flow{}, fmt.Errorf("datapath: read flows: %w", datapath.ErrClosed)
		default:
			return Flow{}, fmt.Errorf("datapath: read flows: %w", err)
		}
	}
}

// Lost returns how many flow events the programs could not write because
// the ring buffer was full, since the Reader opened (raise the ring's
// size, tcpolicy.Config.FlowRingBytes, or read faster).
func (r *Reader) Lost() (uint64, error) {
	c, err := ReadCounters(r.metrics)
	if err != nil {
		return 0, err
	}
	return c.EventsLost - r.lostBase, nil
}

// Pending returns how many bytes of events wait in the ring buffer.
func (r *Reader) Pending() int { return r.rd.AvailableBytes() }

// Close stops the reader; a blocked Read returns datapath.ErrClosed.
// Idempotent.
func (r *Reader) Close() error {
	r.closeOnce.Do(func() {
		r.closeErr = errors.Join(r.rd.Close(), r.ring.Close(), r.metrics.Close())
		if r.closeErr != nil {
			r.closeErr = fmt.Errorf("datapath: close flows: %w", r.closeErr)
		}
	})
	return r.closeErr
}
