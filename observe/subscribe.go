package observe

import (
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clustermesh/clustermesh/flowmask"
)

// Query says which flows a subscription gets, with Hubble's GetFlows
// semantics.
type Query struct {
	// Match selects flows; nil selects all.
	Match func(*flowpb.Flow) bool
	// Number is how many past flows: the last Number (First: the first
	// Number) matching flows kept; 0 is all of them, or none when Follow is
	// set without Since.
	Number uint64
	// First counts past flows from the oldest kept. Not with Follow.
	First bool
	// Follow then streams new matching flows until the subscription is
	// closed, Until is passed, or the hub stops.
	Follow bool
	// Since and Until bound the flows' times; zero: unbounded. With Since
	// every kept flow from Since on is sent (up to Number, from the
	// oldest).
	Since, Until time.Time
	// Mask keeps only these fields of the flows sent (GetFlows'
	// field_mask); empty: whole flows. Applied by the server, not here.
	Mask flowmask.Mask
}

func (q *Query) match(fl *flowpb.Flow) bool {
	if !q.Until.IsZero() && fl.GetTime().AsTime().After(q.Until) {
		return false
	}
	if !q.Since.IsZero() && fl.GetTime().AsTime().Before(q.Since) {
		return false
	}
	return q.Match == nil || q.Match(fl)
}

// Subscribe returns a subscription to the flows q selects: first the past
// ones the hub keeps, then, with q.Follow, every new one until Close, or
// until Run returns. Read its events until the channel closes; Close it
// when done. A following subscription does not end by itself at q.Until:
// its reader stops at the first flow after it.
func (h *Hub) Subscribe(q Query) *Subscription {
	h.mu.Lock()
	defer h.mu.Unlock()
	backlog := h.backlogLocked(&q)
	size := len(backlog)
	if q.Follow {
		size += h.cfg.SubscriberBuffer
	}
	s := &Subscription{hub: h, query: q, ch: make(chan *observerpb.GetFlowsResponse, size)}
	for _, r := range backlog {
		s.ch <- r
	}
	if q.Follow && h.state != hubDone {
		h.subs[s] = struct{}{}
	} else {
		s.endLocked()
	}
	return s
}

// at returns the i-th kept flow, oldest first.
func (h *Hub) at(i int) *observerpb.GetFlowsResponse {
	return h.ring[(h.next+i)%len(h.ring)]
}

// backlogLocked returns the past flows q selects, oldest first.
func (h *Hub) backlogLocked(q *Query) []*observerpb.GetFlowsResponse {
	n := len(h.ring)
	var out []*observerpb.GetFlowsResponse
	switch {
	case q.First || !q.Since.IsZero():
		for i := 0; i < n && (q.Number == 0 || uint64(len(out)) < q.Number); i++ {
			if r := h.at(i); q.match(r.GetFlow()) {
				out = append(out, r)
			}
		}
		return out
	case q.Follow && q.Number == 0:
		return nil
	}
	for i := n - 1; i >= 0 && (q.Number == 0 || uint64(len(out)) < q.Number); i-- {
		if r := h.at(i); q.match(r.GetFlow()) {
			out = append(out, r)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// Subscription is one subscriber's stream.
type Subscription struct {
	hub   *Hub
	query Query
	ch    chan *observerpb.GetFlowsResponse // closed when the subscription ends

	// Guarded by hub.mu: events not yet reported as lost.
	pendingDatapath, pendingOverflow uint64
	ended                            bool
}

// Events returns the stream: flows, and lost_events where events are
// missing (source PERF_EVENT_RING_BUFFER: the datapath's ring buffer was
// full; OBSERVER_EVENTS_QUEUE: this subscriber read too slowly). It is
// closed when the subscription ends. The responses are shared: do not
// modify them.
func (s *Subscription) Events() <-chan *observerpb.GetFlowsResponse { return s.ch }

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

// offerLocked queues r if it matches, without blocking: when the buffer
// is full, it is dropped and counted, and the count is queued before the
// next flow that fits, so the notice marks the gap.
func (s *Subscription) offerLocked(r *observerpb.GetFlowsResponse) {
	if s.query.Match != nil && !s.query.Match(r.GetFlow()) {
		return
	}
	if !s.flushLocked(2) || len(s.ch) == cap(s.ch) {
		s.pendingOverflow++
		s.hub.counts.lostSubscriber++
		return
	}
	s.ch <- r
}

// flushLocked queues the pending lost notices while each leaves room for
// reserve-1 more events; it reports whether none is left pending. Only the
// hub sends, under hub.mu, so room seen stays room.
func (s *Subscription) flushLocked(reserve int) bool {
	for _, p := range []struct {
		n   *uint64
		src flowpb.LostEventSource
	}{
		{&s.pendingDatapath, flowpb.LostEventSource_PERF_EVENT_RING_BUFFER},
		{&s.pendingOverflow, flowpb.LostEventSource_OBSERVER_EVENTS_QUEUE},
	} {
		if *p.n == 0 {
			continue
		}
		if cap(s.ch)-len(s.ch) < reserve {
			return false
		}
		s.ch <- s.hub.lostEvent(p.src, *p.n)
		*p.n = 0
	}
	return true
}

func (h *Hub) lostEvent(src flowpb.LostEventSource, n uint64) *observerpb.GetFlowsResponse {
	return &observerpb.GetFlowsResponse{
		ResponseTypes: &observerpb.GetFlowsResponse_LostEvents{LostEvents: &flowpb.LostEvent{Source: src, NumEventsLost: n}},
		NodeName:      h.cfg.NodeName,
		Time:          timestamppb.Now(),
	}
}

// namespaces are the (cluster, namespace) pairs seen in flows, for
// GetNamespaces, forgotten after namespaceTTL.
type namespaces struct {
	seen  map[nsKey]time.Time
	swept time.Time
}

type nsKey struct{ cluster, namespace string }

const (
	namespaceTTL  = time.Hour // as Hubble's namespace manager
	maxNamespaces = 16384
)

func (n *namespaces) add(fl *flowpb.Flow) {
	now := fl.GetTime().AsTime()
	for _, ep := range []*flowpb.Endpoint{fl.GetSource(), fl.GetDestination()} {
		if ep.GetNamespace() == "" {
			continue
		}
		k := nsKey{ep.GetClusterName(), ep.GetNamespace()}
		if _, ok := n.seen[k]; ok || len(n.seen) < maxNamespaces {
			n.seen[k] = now
		}
	}
	if now.Sub(n.swept) > time.Minute {
		n.swept = now
		for k, t := range n.seen {
			if now.Sub(t) > namespaceTTL {
				delete(n.seen, k)
			}
		}
	}
}

// Namespaces returns the namespaces seen in flows within the last hour,
// with their cluster.
func (h *Hub) Namespaces() []*observerpb.Namespace {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*observerpb.Namespace, 0, len(h.ns.seen))
	for k := range h.ns.seen {
		out = append(out, &observerpb.Namespace{Cluster: k.cluster, Namespace: k.namespace})
	}
	return out
}
