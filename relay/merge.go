package relay

import (
	"cmp"
	"container/heap"
	"slices"
	"time"
)

// source is one peer's stream within a request, as the merge sees it.
type source struct {
	live   bool // its stream is open
	queued int  // its responses waiting in the merge
}

// item is one response waiting in the merge.
type item struct {
	f       frame
	at      int64 // its time (negated in a bounded set of the first)
	seq     uint64
	arrived time.Time
	src     *source
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

func (m *merge) push(s *source, f frame, now time.Time) {
	if s.live && s.queued == 0 {
		m.liveEmpty--
	}
	s.queued++
	m.seq++
	heap.Push(&m.h, item{f: f, at: f.at, seq: m.seq, arrived: now, src: s})
}

// next returns the response that may leave now; false when none may.
func (m *merge) next(now time.Time) (frame, bool) {
	if len(m.h) == 0 {
		return frame{}, false
	}
	if len(m.h) <= m.max && m.liveEmpty > 0 && now.Sub(m.h[0].arrived) < m.window {
		return frame{}, false
	}
	return m.pop()
}

// pop removes the oldest response; false when empty.
func (m *merge) pop() (frame, bool) {
	if len(m.h) == 0 {
		return frame{}, false
	}
	it := heap.Pop(&m.h).(item)
	it.src.queued--
	if it.src.live && it.src.queued == 0 {
		m.liveEmpty++
	}
	return it.f, true
}

// wake is when the oldest waiting response will have waited the window
// (zero when nothing waits).
func (m *merge) wake() time.Time {
	if len(m.h) == 0 {
		return time.Time{}
	}
	return m.h[0].arrived.Add(m.window)
}

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

func (b *bounded) add(f frame) {
	at := f.at
	if b.first {
		at = -at
	}
	b.seq++
	heap.Push(&b.h, item{f: f, at: at, seq: b.seq})
	if len(b.h) > b.n {
		heap.Pop(&b.h)
	}
}

// sorted returns the kept responses, oldest first.
func (b *bounded) sorted() []frame {
	items := slices.Clone(b.h)
	slices.SortFunc(items, func(x, y item) int {
		return cmp.Or(cmp.Compare(x.f.at, y.f.at), cmp.Compare(x.seq, y.seq))
	})
	out := make([]frame, len(items))
	for i, it := range items {
		out[i] = it.f
	}
	return out
}
