package relay

import (
	"container/heap"
	"slices"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
)

// source is one peer's stream within a request, as the merge sees it.
type source struct {
	live   bool // its stream is open
	queued int  // its responses waiting in the merge
}

// item is one response waiting in the merge.
type item struct {
	resp    *observerpb.GetFlowsResponse
	at      int64 // its time, ns since the epoch
	seq     uint64
	arrived time.Time
	src     *source
}

// respTime is the time of a response: its own, else its flow's.
func respTime(r *observerpb.GetFlowsResponse) int64 {
	if t := r.GetTime(); t != nil {
		return t.AsTime().UnixNano()
	}
	return r.GetFlow().GetTime().AsTime().UnixNano()
}

// merge orders the responses of several streams by time. Each stream is in
// time order; a response leaves the merge when it is the oldest waiting and
// either every open stream has a response waiting (so nothing older can
// come from them: an exact k-way merge), or it has waited the window (a
// stream that is quiet or slow is not waited for longer), or more than max
// are waiting.
type merge struct {
	h         itemHeap
	seq       uint64
	max       int
	window    time.Duration
	liveEmpty int // open streams with nothing waiting
}

func newMerge(max int, window time.Duration) *merge {
	return &merge{max: max, window: window}
}

func (m *merge) open(s *source) {
	if !s.live {
		s.live = true
		if s.queued == 0 {
			m.liveEmpty++
		}
	}
}

func (m *merge) close(s *source) {
	if s.live {
		s.live = false
		if s.queued == 0 {
			m.liveEmpty--
		}
	}
}

func (m *merge) push(s *source, r *observerpb.GetFlowsResponse, now time.Time) {
	if s.live && s.queued == 0 {
		m.liveEmpty--
	}
	s.queued++
	m.seq++
	heap.Push(&m.h, item{resp: r, at: respTime(r), seq: m.seq, arrived: now, src: s})
}

// next returns the response that may leave now, or nil.
func (m *merge) next(now time.Time) *observerpb.GetFlowsResponse {
	if len(m.h) == 0 {
		return nil
	}
	if len(m.h) <= m.max && m.liveEmpty > 0 && now.Sub(m.h[0].arrived) < m.window {
		return nil
	}
	return m.pop()
}

// pop removes the oldest response (nil when empty).
func (m *merge) pop() *observerpb.GetFlowsResponse {
	if len(m.h) == 0 {
		return nil
	}
	it := heap.Pop(&m.h).(item)
	it.src.queued--
	if it.src.live && it.src.queued == 0 {
		m.liveEmpty++
	}
	return it.resp
}

// wake is when the oldest waiting response will have waited the window
// (zero when nothing waits).
func (m *merge) wake() time.Time {
	if len(m.h) == 0 {
		return time.Time{}
	}
	return m.h[0].arrived.Add(m.window)
}

func (m *merge) len() int { return len(m.h) }

// itemHeap is a min-heap by time, then arrival.
type itemHeap []item

func (h itemHeap) Len() int { return len(h) }
func (h itemHeap) Less(i, j int) bool {
	if h[i].at != h[j].at {
		return h[i].at < h[j].at
	}
	return h[i].seq < h[j].seq
}
func (h itemHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(x any)   { *h = append(*h, x.(item)) }
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = item{}
	*h = old[:len(old)-1]
	return it
}

// bounded keeps the n newest responses (or, with first, the n oldest) of
// a request that does not follow: each peer sends its own n, the relay the
// n of the whole mesh.
type bounded struct {
	n     int
	first bool
	h     itemHeap // the kept: a min-heap (newest kept) or max-heap by negated time (first)
	seq   uint64
}

func (b *bounded) add(r *observerpb.GetFlowsResponse) {
	at := respTime(r)
	if b.first {
		at = -at
	}
	b.seq++
	heap.Push(&b.h, item{resp: r, at: at, seq: b.seq})
	if len(b.h) > b.n {
		heap.Pop(&b.h)
	}
}

// sorted returns the kept responses, oldest first.
func (b *bounded) sorted() []*observerpb.GetFlowsResponse {
	items := slices.Clone(b.h)
	slices.SortFunc(items, func(x, y item) int {
		ax, ay := respTime(x.resp), respTime(y.resp)
		switch {
		case ax < ay:
			return -1
		case ax > ay:
			return 1
		}
		return int(x.seq) - int(y.seq)
	})
	out := make([]*observerpb.GetFlowsResponse, len(items))
	for i, it := range items {
		out[i] = it.resp
	}
	return out
}
