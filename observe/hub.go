package observe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/datapath/flows"
)

// Source is where a Hub reads flow events: *flows.Reader implements
// it. Lost must be safe to call while Read blocks.
type Source interface {
	// Read returns the next flow, waiting until ctx is done.
	Read(ctx context.Context) (flows.Flow, error)
	// Lost returns how many events the datapath could not report (its
	// ring buffer was full) since the source opened.
	Lost() (uint64, error)
}

// Defaults of Config.
const (
	DefaultCapacity         = 4096
	DefaultSubscriberBuffer = 16384
	DefaultLostInterval     = time.Second
)

// Config configures a Hub; the zero value works.
type Config struct {
	// Enricher names the flows' ends; nil leaves only identities,
	// addresses and cluster ids.
	Enricher Enricher
	// Capacity is how many flows the hub keeps for Subscribe's last
	// (default 4096); the oldest is overwritten.
	Capacity int
	// SubscriberBuffer is how many events a following subscriber may fall
	// behind before events are dropped for it, and counted (default 16384:
	// about 0.16 s of flows at 100,000 flows/s).
	SubscriberBuffer int
	// LostInterval is how often Source.Lost is read (default 1s).
	LostInterval time.Duration
}

// Lost event sources (LostEvents.Source).
const (
	// LostDatapath: the datapath's ring buffer was full, the policy
	// programs could not report these events (to every subscriber).
	LostDatapath = "datapath"
	// LostSubscriber: this subscriber read too slowly, its buffer was full
	// and these events were dropped for it alone.
	LostSubscriber = "subscriber"
)

// Event is one item of a flow stream: a flow, or a count of events lost
// at that point of the stream. It is one line of the NDJSON stream.
type Event struct {
	Flow *Flow       `json:"flow,omitempty"`
	Lost *LostEvents `json:"lost_events,omitempty"`
}

// LostEvents says how many events a stream lacks at that point, and why.
type LostEvents struct {
	Source string `json:"source"` // LostDatapath or LostSubscriber
	Count  uint64 `json:"num_events_lost"`
}

// Hub reads flows from a Source, enriches them, keeps the last Capacity,
// fans them out to subscribers and counts them. A slow subscriber never
// blocks the reader: its events are dropped and counted instead. Every
// method is safe for concurrent use.
type Hub struct {
	cfg Config

	mu      sync.Mutex
	ring    []*Flow // guarded by mu; ring[next] is the oldest once full
	next    int
	subs    map[*Subscription]struct{}
	state   int // guarded by mu: hubIdle, hubRunning, hubDone
	src     Source
	counts  counts // guarded by mu
	seenLos uint64 // guarded by mu: Source.Lost at the last poll
}

const (
	hubIdle = iota
	hubRunning
	hubDone
)

// NewHub returns a hub; Run feeds it.
func NewHub(cfg Config) *Hub {
	if cfg.Capacity <= 0 {
		cfg.Capacity = DefaultCapacity
	}
	if cfg.SubscriberBuffer <= 0 {
		cfg.SubscriberBuffer = DefaultSubscriberBuffer
	}
	cfg.SubscriberBuffer = max(cfg.SubscriberBuffer, 2) // a lost notice and a flow
	if cfg.LostInterval <= 0 {
		cfg.LostInterval = DefaultLostInterval
	}
	return &Hub{cfg: cfg, ring: make([]*Flow, 0, cfg.Capacity), subs: map[*Subscription]struct{}{}}
}

// Run reads src until ctx is done (then it returns nil) or src fails (then
// it returns the error, e.g. datapath.ErrClosed when the reader was closed).
// It polls src.Lost every LostInterval meanwhile. When Run returns, every
// following subscription ends; the flows kept can still be read. Run once.
func (h *Hub) Run(ctx context.Context, src Source) error {
	h.mu.Lock()
	if h.state != hubIdle {
		h.mu.Unlock()
		return errors.New("running the flow hub: Run called twice")
	}
	h.state, h.src = hubRunning, src
	h.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(h.cfg.LostInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				h.pollLost()
			}
		}
	})
	err := h.read(ctx, src)
	cancel()
	wg.Wait()
	h.pollLost()

	h.mu.Lock()
	h.state = hubDone
	for s := range h.subs {
		s.endLocked()
	}
	h.mu.Unlock()
	return err
}

func (h *Hub) read(ctx context.Context, src Source) error {
	for {
		f, err := src.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("reading flows: %w", err)
		}
		fl := Enrich(h.cfg.Enricher, f)
		h.publish(&fl)
	}
}

// publish keeps fl, counts it and offers it to every subscriber.
func (h *Hub) publish(fl *Flow) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.ring) < cap(h.ring) {
		h.ring = append(h.ring, fl)
	} else {
		h.ring[h.next] = fl
		h.next = (h.next + 1) % len(h.ring)
	}
	h.counts.add(fl)
	for s := range h.subs {
		if s.filter.Match(fl) {
			s.offerLocked(fl)
		}
	}
}

// pollLost reads the source's lost count and reports an increase to every
// subscriber.
func (h *Hub) pollLost() {
	h.mu.Lock()
	src := h.src
	h.mu.Unlock()
	if src == nil {
		return
	}
	n, err := src.Lost()
	if err != nil {
		slog.Debug("observe: read lost flow events", "err", err)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if n <= h.seenLos {
		return
	}
	d := n - h.seenLos
	h.seenLos = n
	h.counts.lostDatapath += d
	for s := range h.subs {
		s.pendingDatapath += d
		s.flushLocked(2)
	}
}

// Subscribe returns a subscription to the flows matching f, like hubble
// observe: first the last matching flows the hub keeps (last < 0: all of
// them, 0: none), then, with follow, every new matching flow until Close,
// or until Run returns; without follow it ends after the last flows. Read
// its events until the channel closes; Close it when done.
func (h *Hub) Subscribe(f Filter, last int, follow bool) *Subscription {
	h.mu.Lock()
	defer h.mu.Unlock()
	var backlog []*Flow
	if last != 0 {
		n := len(h.ring)
		for i := n - 1; i >= 0 && (last < 0 || len(backlog) < last); i-- {
			fl := h.ring[(h.next+i)%n]
			if f.Match(fl) {
				backlog = append(backlog, fl)
			}
		}
	}
	size := len(backlog)
	if follow {
		size += h.cfg.SubscriberBuffer
	}
	s := &Subscription{hub: h, filter: f, ch: make(chan Event, size)}
	for i := len(backlog) - 1; i >= 0; i-- {
		s.ch <- Event{Flow: backlog[i]}
	}
	if follow && h.state != hubDone {
		h.subs[s] = struct{}{}
	} else {
		s.endLocked()
	}
	return s
}

// Stats are a hub's counts since it was made.
type Stats struct {
	Flows          uint64 `json:"flows"`           // read from the source
	Kept           int    `json:"kept"`            // in the ring, at most Capacity
	LostDatapath   uint64 `json:"lost_datapath"`   // the datapath's ring buffer was full
	LostSubscriber uint64 `json:"lost_subscriber"` // dropped for slow subscribers, summed
	Subscribers    int    `json:"subscribers"`     // following now
}

// Stats returns the hub's counts.
func (h *Hub) Stats() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	return Stats{
		Flows: h.counts.flows, Kept: len(h.ring), LostDatapath: h.counts.lostDatapath,
		LostSubscriber: h.counts.lostSubscriber, Subscribers: len(h.subs),
	}
}

// Subscription is one subscriber's stream.
type Subscription struct {
	hub    *Hub
	filter Filter
	ch     chan Event // closed when the subscription ends

	// Guarded by hub.mu: events not yet reported as lost.
	pendingDatapath, pendingOverflow uint64
	ended                            bool
}

// Events returns the stream; it is closed when the subscription ends. The
// flows are shared: do not modify them.
func (s *Subscription) Events() <-chan Event { return s.ch }

// Close ends the subscription. Idempotent.
func (s *Subscription) Close() {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	s.endLocked()
}

func (s *Subscription) endLocked() {
	if s.ended {
		return
	}
	s.ended = true
	s.flushLocked(1) // the last notices, if they fit
	delete(s.hub.subs, s)
	close(s.ch)
}

// offerLocked queues fl without blocking: when the buffer is full, it is
// dropped and counted, and the count is queued before the next flow that
// fits, so the notice marks the gap.
func (s *Subscription) offerLocked(fl *Flow) {
	if !s.flushLocked(2) || len(s.ch) == cap(s.ch) {
		s.pendingOverflow++
		s.hub.counts.lostSubscriber++
		return
	}
	s.ch <- Event{Flow: fl}
}

// flushLocked queues the pending lost notices while each leaves room for
// reserve-1 more events; it reports whether none is left pending. Only the
// hub sends, under hub.mu, so room seen stays room.
func (s *Subscription) flushLocked(reserve int) bool {
	if s.pendingDatapath == 0 && s.pendingOverflow == 0 {
		return true
	}
	if s.pendingDatapath > 0 {
		if cap(s.ch)-len(s.ch) < reserve {
			return false
		}
		s.ch <- Event{Lost: &LostEvents{Source: LostDatapath, Count: s.pendingDatapath}}
		s.pendingDatapath = 0
	}
	if s.pendingOverflow > 0 {
		if cap(s.ch)-len(s.ch) < reserve {
			return false
		}
		s.ch <- Event{Lost: &LostEvents{Source: LostSubscriber, Count: s.pendingOverflow}}
		s.pendingOverflow = 0
	}
	return true
}
