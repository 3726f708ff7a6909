package datapath

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
)

// Verdict is what the policy programs did with a packet.
type Verdict uint8

// Verdicts.
const (
	VerdictForwarded Verdict = 1
	VerdictDropped   Verdict = 2
)

func (v Verdict) String() string {
	switch v {
	case VerdictForwarded:
		return "FORWARDED"
	case VerdictDropped:
		return "DROPPED"
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
)

func (r DropReason) String() string {
	switch r {
	case DropNone:
		return "none"
	case DropPolicyDenied:
		return "policy-denied"
	case DropInvalidPacket:
		return "invalid-packet"
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Flow is one packet reported by the policy programs: every dropped one,
// and forwarded ones as FlowConfig says.
type Flow struct {
	Time       time.Time
	Verdict    Verdict
	DropReason DropReason
	// Direction is relative to the local endpoint: Egress when it sent
	// the packet (Src is the endpoint), Ingress when it receives it.
	Direction Direction
	// Ifindex is the endpoint's host-side interface.
	Ifindex  int
	Src, Dst netip.AddrPort // ports 0 for portless protocols and fragments
	Protocol Protocol
	// Identities and clusters: the endpoint's from AttachPolicy and
	// FlowConfig.ClusterID, the peer's from the ipcache (IdentityWorld and
	// cluster 0 for an address it does not know).
	SrcIdentity, DstIdentity uint32
	SrcCluster, DstCluster   uint16
	Bytes                    uint32 // packet length
	SampleRate               uint32 // FlowConfig.SampleRate when reported
	Reply                    bool   // a reply of a tracked flow (no policy lookup)
	New                      bool   // the packet created its flow's conntrack entry
	Sampled                  bool   // a forwarded packet reported by sampling
	Fragment                 bool   // a non-first fragment (no ports)
}

// FlowConfig says which forwarded packets the policy programs report
// (dropped ones always are), and the local cluster id they report for local
// endpoints. The zero value reports no forwarded packet.
type FlowConfig struct {
	// SampleRate reports one in SampleRate forwarded packets (per CPU,
	// deterministic: every SampleRate-th); 1 reports all, 0 none.
	SampleRate uint32
	// TraceNew reports every packet that starts a flow (creates its
	// conntrack entry), sampled or not.
	TraceNew bool
	// ClusterID is the local cluster's id.
	ClusterID uint16
}

// SetFlowConfig sets what the policy programs report; it takes effect on
// the next packet.
func (m *Maps) SetFlowConfig(c FlowConfig) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := m.policyLocked("set flow config")
	if err != nil {
		return err
	}
	ps.cfg.SampleRate, ps.cfg.ClusterID = c.SampleRate, c.ClusterID
	ps.cfg.Flags &^= cfgTraceNew
	if c.TraceNew {
		ps.cfg.Flags |= cfgTraceNew
	}
	if err := ps.writeConfig(); err != nil {
		return fmt.Errorf("datapath: set flow config: %w", err)
	}
	return nil
}

// FlowConfig returns what SetFlowConfig last set (kept in the pinned
// config map across restarts).
func (m *Maps) FlowConfig() (FlowConfig, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := m.policyLocked("read flow config")
	if err != nil {
		return FlowConfig{}, err
	}
	v := ps.cfg
	return FlowConfig{SampleRate: v.SampleRate, TraceNew: v.Flags&cfgTraceNew != 0, ClusterID: v.ClusterID}, nil
}

// PolicyCounters are the policy programs' packet and event counters, summed
// over CPUs, since the pinned counters were created. Arrays are indexed by
// Direction.
type PolicyCounters struct {
	Forwarded      [2]uint64
	DroppedPolicy  [2]uint64
	DroppedInvalid [2]uint64
	Events         uint64 // flow events written to the ring buffer
	EventsLost     uint64 // flow events the full ring buffer could not take
	FlowsCreated   uint64 // conntrack entries created
}

// Dropped is every drop, both directions and reasons.
func (c PolicyCounters) Dropped() uint64 {
	return c.DroppedPolicy[0] + c.DroppedPolicy[1] + c.DroppedInvalid[0] + c.DroppedInvalid[1]
}

// PolicyCounters reads the counters.
func (m *Maps) PolicyCounters() (PolicyCounters, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := m.policyLocked("read policy counters")
	if err != nil {
		return PolicyCounters{}, err
	}
	return readPolicyCounters(ps.metrics)
}

func readPolicyCounters(em *ebpf.Map) (PolicyCounters, error) {
	var c PolicyCounters
	sum := func(idx uint32) (uint64, error) {
		var per []uint64
		if err := em.Lookup(&idx, &per); err != nil {
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
		{policyCounterForwardedIngress, &c.Forwarded[Ingress]},
		{policyCounterForwardedEgress, &c.Forwarded[Egress]},
		{policyCounterDroppedPolicyIngress, &c.DroppedPolicy[Ingress]},
		{policyCounterDroppedPolicyEgress, &c.DroppedPolicy[Egress]},
		{policyCounterDroppedInvalidIngress, &c.DroppedInvalid[Ingress]},
		{policyCounterDroppedInvalidEgress, &c.DroppedInvalid[Egress]},
		{policyCounterEvents, &c.Events},
		{policyCounterEventsLost, &c.EventsLost},
		{policyCounterCTCreated, &c.FlowsCreated},
	} {
		v, err := sum(f.idx)
		if err != nil {
			return PolicyCounters{}, err
		}
		*f.dst = v
	}
	return c, nil
}

// FlowReader reads the flow events of the policy programs from the pinned
// ring buffer (FlowsMapName). It holds its own handles: closing the Maps
// does not stop it. Read one pin directory's flows with one FlowReader at a
// time (two would share the events between them). Read is not safe for
// concurrent use; Lost and Close are safe at any time.
type FlowReader struct {
	rd      *ringbuf.Reader
	ring    *ebpf.Map
	metrics *ebpf.Map
	rec     ringbuf.Record

	lostBase uint64

	offset    int64 // wall − monotonic, ns
	offsetAt  time.Time
	closeOnce sync.Once
	closeErr  error
}

// OpenFlows opens a reader of the flow events of m's pin directory (the
// ring buffer is created if no AttachPolicy did yet). Events written before
// it opened and not yet read by a previous reader are read first.
func OpenFlows(m *Maps) (*FlowReader, error) {
	m.mu.Lock()
	ps, err := m.policyLocked("open flows")
	var ring, metrics *ebpf.Map
	if err == nil {
		// Own handles, independent of the Maps' lifetime.
		if ring, err = ps.flows.Clone(); err == nil {
			if metrics, err = ps.metrics.Clone(); err != nil {
				ring.Close()
			}
		}
		if err != nil {
			err = fmt.Errorf("datapath: open flows: %w", err)
		}
	}
	m.mu.Unlock()
	if err != nil {
		return nil, err
	}
	rd, err := ringbuf.NewReader(ring)
	if err != nil {
		ring.Close()
		metrics.Close()
		return nil, fmt.Errorf("datapath: open flows: %w", err)
	}
	r := &FlowReader{rd: rd, ring: ring, metrics: metrics}
	c, err := readPolicyCounters(metrics)
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
func (r *FlowReader) resync() {
	var ts unix.Timespec
	before := time.Now()
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	r.offset = before.UnixNano() - ts.Nano()
	r.offsetAt = before
}

func (r *FlowReader) wall(mono uint64) time.Time {
	return time.Unix(0, int64(mono)+r.offset)
}

// Read returns the next flow, waiting for one until ctx is done (then it
// returns ctx's error). After Close it returns ErrClosed.
func (r *FlowReader) Read(ctx context.Context) (Flow, error) {
	if r.offsetAt.IsZero() || time.Since(r.offsetAt) > 10*time.Second {
		r.resync()
	}
	stop := context.AfterFunc(ctx, func() { r.rd.Flush() })
	defer stop()
	for {
		err := r.rd.ReadInto(&r.rec)
		switch {
		case err == nil:
			f, ok := decodeFlow(r.rec.RawSample, r.wall)
			if !ok {
				return Flow{}, fmt.Errorf("datapath: read flows: short event of %d bytes", len(r.rec.RawSample))
			}
			return f, nil
		case errors.Is(err, ringbuf.ErrFlushed):
			if ctx.Err() != nil {
				return Flow{}, ctx.Err()
			}
			// A flush meant for an earlier call: read on.
		case errors.Is(err, ringbuf.ErrClosed), errors.Is(err, os.ErrClosed):
			return Flow{}, fmt.Errorf("datapath: read flows: %w", ErrClosed)
		default:
			return Flow{}, fmt.Errorf("datapath: read flows: %w", err)
		}
	}
}

// Lost returns how many flow events the programs could not write because
// the ring buffer was full, since OpenFlows (raise Config.FlowRingBytes, or
// read faster).
func (r *FlowReader) Lost() (uint64, error) {
	c, err := readPolicyCounters(r.metrics)
	if err != nil {
		return 0, err
	}
	return c.EventsLost - r.lostBase, nil
}

// Pending returns how many bytes of events wait in the ring buffer.
func (r *FlowReader) Pending() int { return r.rd.AvailableBytes() }

// Close stops the reader; a blocked Read returns ErrClosed. Idempotent.
func (r *FlowReader) Close() error {
	r.closeOnce.Do(func() {
		r.closeErr = errors.Join(r.rd.Close(), r.ring.Close(), r.metrics.Close())
		if r.closeErr != nil {
			r.closeErr = fmt.Errorf("datapath: close flows: %w", r.closeErr)
		}
	})
	return r.closeErr
}
