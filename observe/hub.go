package observe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"

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
	DefaultCapacity         = 4095 // Hubble's default event buffer capacity
	DefaultSubscriberBuffer = 16384
	DefaultLostInterval     = time.Second
)

// Config configures a Hub; the zero value works.
type Config struct {
	// Enricher names the flows' ends; nil leaves only identities,
	// addresses and cluster ids.
	Enricher Enricher
	// NodeName is the flows' node_name, "cluster/node" as Hubble names
	// nodes in a mesh.
	NodeName string
	// MaxConnectedClusters is the mesh size (255, the default, or 511): it
	// tells which cluster an identity of an L7 flow belongs to.
	MaxConnectedClusters uint32
	// Capacity is how many flows the hub keeps for requests of past flows
	// (default 4095); the oldest is overwritten.
	Capacity int
	// SubscriberBuffer is how many events a following subscriber may fall
	// behind before events are dropped for it, and counted (default 16384:
	// about 0.16 s of flows at 100,000 flows/s).
	SubscriberBuffer int
	// LostInterval is how often Source.Lost is read (default 1s).
	LostInterval time.Duration
	// OnFlow is called with every flow on its source's reading goroutine
	// (concurrently for two sources), before subscribers get it (flow
	// metrics): it must be fast and must not keep or modify the flow.
	OnFlow []func(*flowpb.Flow)
	// Logger receives the hub's errors; nil: slog.Default().
	Logger *slog.Logger
}

// Hub reads flows from a Source, enriches them, keeps the last Capacity,
// fans them out to subscribers and counts them. A slow subscriber never
// blocks the reader: its events are dropped and counted instead. Every
// method is safe for concurrent use.
type Hub struct {
	cfg   Config
	enr   *enricher
	start time.Time

	mu      sync.Mutex
	ring    []*observerpb.GetFlowsResponse // guarded by mu; ring[next] is the oldest once full
	next    int                            // guarded by mu
	subs    map[*Subscription]struct{}     // guarded by mu
	state   int                            // guarded by mu: hubIdle, hubRunning, hubDone
	srcs    []Source                       // guarded by mu
	counts  counts                         // guarded by mu
	seenLos uint64                         // guarded by mu: the sources' Lost summed at the last poll
	ns      namespaces                     // guarded by mu
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
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Hub{
		cfg: cfg, enr: newEnricher(cfg.Enricher, cfg.NodeName, cfg.MaxConnectedClusters), start: time.Now(),
		ring: make([]*observerpb.GetFlowsResponse, 0, cfg.Capacity), subs: map[*Subscription]struct{}{},
		ns: namespaces{seen: map[nsKey]time.Time{}},
	}
}

// Run reads every source until ctx is done (then it returns nil) or one
// fails (then it returns the error, e.g. datapath.ErrClosed when a reader
// was closed): the policy programs' events and the socket load balancer's
// translations, each on a goroutine of its own. It polls the sources'
// Lost every LostInterval meanwhile. When Run returns, every following
// subscription ends; the flows kept can still be read. Run once.
func (h *Hub) Run(ctx context.Context, srcs ...Source) error {
	h.mu.Lock()
	if h.state != hubIdle {
		h.mu.Unlock()
		return errors.New("running the flow hub: Run called twice")
	}
	h.state, h.srcs = hubRunning, srcs
	h.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
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
	errs := make(chan error, len(srcs))
	for _, src := range srcs {
		wg.Go(func() {
			if err := h.read(ctx, src); err != nil {
				errs <- err
				cancel()
			}
		})
	}
	<-ctx.Done()
	wg.Wait()
	h.pollLost()

	h.mu.Lock()
	h.state = hubDone
	for s := range h.subs {
		s.endLocked()
	}
	h.mu.Unlock()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
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
		h.Publish(h.enr.flow(f))
	}
}

// Publish hands fl to the hooks, keeps it and offers it to every
// subscriber, as if the source had produced it. fl must not be modified
// afterwards.
func (h *Hub) Publish(fl *flowpb.Flow) {
	for _, fn := range h.cfg.OnFlow {
		fn(fl)
	}
	resp := &observerpb.GetFlowsResponse{
		ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: fl}, NodeName: fl.GetNodeName(), Time: fl.GetTime(),
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.ring) < cap(h.ring) {
		h.ring = append(h.ring, resp)
	} else {
		h.ring[h.next] = resp
		h.next = (h.next + 1) % len(h.ring)
	}
	h.counts.flows++
	h.ns.add(fl)
	for s := range h.subs {
		s.offerLocked(resp)
	}
}

// pollLost reads the sources' lost counts and reports an increase to
// every subscriber.
func (h *Hub) pollLost() {
	h.mu.Lock()
	srcs := h.srcs
	h.mu.Unlock()
	var n uint64
	for _, src := range srcs {
		l, err := src.Lost()
		if err != nil {
			h.cfg.Logger.Debug("reading lost flow events", "err", err)
			return
		}
		n += l
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

// Stats are a hub's counts since it was made.
type Stats struct {
	Flows          uint64 `json:"flows"`           // read from the source
	Kept           int    `json:"kept"`            // in the ring, at most Capacity
	Capacity       int    `json:"capacity"`        // the ring's size
	LostDatapath   uint64 `json:"lost_datapath"`   // the datapath's ring buffer was full
	LostSubscriber uint64 `json:"lost_subscriber"` // dropped for slow subscribers, summed
	Subscribers    int    `json:"subscribers"`     // following now
}

// Stats returns the hub's counts.
func (h *Hub) Stats() Stats {
	h.mu.Lock()
	defer h.mu.Unlock()
	return Stats{
		Flows: h.counts.flows, Kept: len(h.ring), Capacity: h.cfg.Capacity, LostDatapath: h.counts.lostDatapath,
		LostSubscriber: h.counts.lostSubscriber, Subscribers: len(h.subs),
	}
}

// Follow calls fn for every new event (flows, and lost_events when this
// follower fell behind) until ctx is done (then it returns nil), fn
// returns an error (returned) or the hub stops. It is how flow exporters
// read the hub.
func (h *Hub) Follow(ctx context.Context, fn func(*observerpb.GetFlowsResponse) error) error {
	s := h.Subscribe(Query{Follow: true})
	defer s.Close()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-s.Events():
			if !ok {
				return nil
			}
			if err := fn(ev); err != nil {
				return err
			}
		}
	}
}
