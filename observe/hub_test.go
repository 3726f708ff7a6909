package observe

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

var errSourceClosed = errors.New("source closed")

// chanSource is the one fake of these tests: a Source fed by a channel
// (the real flows.Reader is exercised by the agent's end-to-end test and by
// TestFiguresObserve).
type chanSource struct {
	ch   chan flows.Flow
	lost atomic.Uint64
}

func newChanSource() *chanSource { return &chanSource{ch: make(chan flows.Flow)} }

func (s *chanSource) Read(ctx context.Context) (flows.Flow, error) {
	select {
	case f, ok := <-s.ch:
		if !ok {
			return flows.Flow{}, errSourceClosed
		}
		return f, nil
	case <-ctx.Done():
		return flows.Flow{}, ctx.Err()
	}
}

func (s *chanSource) Lost() (uint64, error) { return s.lost.Load(), nil }

// runHub runs a hub on a chanSource until the test ends.
func runHub(t *testing.T, cfg Config) (*Hub, *chanSource) {
	t.Helper()
	if cfg.Enricher == nil {
		cfg.Enricher = testEnricher{}
	}
	h, src := NewHub(cfg), newChanSource()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := h.Run(ctx, src); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return h, src
}

// numbered is flow i: from west's frontend (source port i) to east's
// checkout-0, dropped when i is even.
func numbered(i int) flows.Flow {
	v := flows.VerdictForwarded
	if i%2 == 0 {
		v = flows.VerdictDropped
	}
	f := dpFlow(fmt.Sprintf("10.2.1.5:%d", i), 132000, 2, "10.1.1.11:8080", 70001, 1, v)
	f.Time = flowTime(i)
	return f
}

// flowTime is the time of flow i.
func flowTime(i int) time.Time { return time.Date(2026, 11, 21, 3, 0, i, 0, time.UTC) }

// send feeds flows from..to (inclusive) and waits until the hub has them.
func send(t *testing.T, h *Hub, src *chanSource, from, to int) {
	t.Helper()
	before := h.Stats().Flows
	for i := from; i <= to; i++ {
		src.ch <- numbered(i)
	}
	testenv.WaitFor(t, 10*time.Second, "the hub to read every flow", func() bool { return h.Stats().Flows == before+uint64(to-from+1) })
}

// ports returns the source ports of the flows of evs, and the lost notices
// as "lost:source:N".
func ports(evs []*observerpb.GetFlowsResponse) string {
	var s []string
	for _, ev := range evs {
		if l := ev.GetLostEvents(); l != nil {
			s = append(s, fmt.Sprintf("lost:%s:%d", l.GetSource(), l.GetNumEventsLost()))
		} else {
			s = append(s, fmt.Sprint(sourcePort(ev.GetFlow())))
		}
	}
	return strings.Join(s, " ")
}

// verdictIs matches flows of verdict v.
func verdictIs(v flowpb.Verdict) func(*flowpb.Flow) bool {
	return func(f *flowpb.Flow) bool { return f.GetVerdict() == v }
}

// last is a query of the last n flows (0: none when following), following
// or not.
func last(n int, follow bool, match func(*flowpb.Flow) bool) Query {
	q := Query{Follow: follow, Match: match}
	if n > 0 {
		q.Number = uint64(n)
	}
	return q
}

// drain reads a subscription until it ends.
func drain(t *testing.T, s *Subscription) []*observerpb.GetFlowsResponse {
	t.Helper()
	var evs []*observerpb.GetFlowsResponse
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-s.Events():
			if !ok {
				return evs
			}
			evs = append(evs, ev)
		case <-timeout:
			t.Fatalf("subscription did not end; got %s", ports(evs))
		}
	}
}

// take reads n events of a following subscription.
func take(t *testing.T, s *Subscription, n int) []*observerpb.GetFlowsResponse {
	t.Helper()
	var evs []*observerpb.GetFlowsResponse
	timeout := time.After(10 * time.Second)
	for len(evs) < n {
		select {
		case ev, ok := <-s.Events():
			if !ok {
				t.Fatalf("subscription ended after %s, want %d events", ports(evs), n)
			}
			evs = append(evs, ev)
		case <-timeout:
			t.Fatalf("got %s, want %d events", ports(evs), n)
		}
	}
	return evs
}

func TestHubRingLast(t *testing.T) {
	h, src := runHub(t, Config{Capacity: 5})
	if got := ports(drain(t, h.Subscribe(last(3, false, nil)))); got != "" {
		t.Fatalf("empty hub: %s", got)
	}
	send(t, h, src, 1, 8) // the ring keeps 4..8
	for _, tc := range []struct {
		name string
		q    Query
		want string
	}{
		{"last 3", Query{Number: 3}, "6 7 8"},
		{"all", Query{}, "4 5 6 7 8"},
		{"last 100", Query{Number: 100}, "4 5 6 7 8"},
		{"first 2", Query{Number: 2, First: true}, "4 5"},
		{"follow without number", Query{Follow: true}, ""},
		{"dropped, last 2", Query{Number: 2, Match: verdictIs(flowpb.Verdict_DROPPED)}, "6 8"},
		{"forwarded", Query{Match: verdictIs(flowpb.Verdict_FORWARDED)}, "5 7"},
		{"since 6", Query{Since: flowTime(6)}, "6 7 8"},
		{"since 5, number 2", Query{Since: flowTime(5), Number: 2}, "5 6"},
		{"until 6", Query{Until: flowTime(6)}, "4 5 6"},
		{"last 1 until 6", Query{Until: flowTime(6), Number: 1}, "6"},
	} {
		s := h.Subscribe(tc.q)
		if tc.q.Follow {
			s.Close()
		}
		if got := ports(drain(t, s)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	if st := h.Stats(); st.Flows != 8 || st.Kept != 5 || st.Capacity != 5 || st.Subscribers != 0 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestHubFanOut(t *testing.T) {
	h, src := runHub(t, Config{})
	send(t, h, src, 1, 2)
	all := h.Subscribe(last(1, true, nil))
	defer all.Close()
	dropped := h.Subscribe(last(0, true, verdictIs(flowpb.Verdict_DROPPED)))
	defer dropped.Close()
	none := h.Subscribe(last(-1, true, func(f *flowpb.Flow) bool { return f.GetDestination().GetClusterName() == "west" }))
	if h.Stats().Subscribers != 3 {
		t.Fatalf("Stats = %+v", h.Stats())
	}
	send(t, h, src, 3, 6)
	if got := ports(take(t, all, 5)); got != "2 3 4 5 6" {
		t.Errorf("follow with last 1: %s", got)
	}
	if got := ports(take(t, dropped, 2)); got != "4 6" {
		t.Errorf("follow dropped: %s", got)
	}
	if n := len(none.Events()); n != 0 {
		t.Errorf("a filter matching nothing got %d events", n)
	}
	none.Close()
	none.Close() // idempotent
	if _, ok := <-none.Events(); ok {
		t.Error("a closed subscription has events")
	}
	testenv.WaitFor(t, 5*time.Second, "two subscribers", func() bool { return h.Stats().Subscribers == 2 })
}

// A subscriber that does not read never blocks the reader: its events are
// dropped, counted, and reported to it where the gap is.
func TestHubSlowSubscriber(t *testing.T) {
	h, src := runHub(t, Config{SubscriberBuffer: 4})
	slow := h.Subscribe(last(0, true, nil))
	defer slow.Close()
	fast := h.Subscribe(last(0, true, nil))
	defer fast.Close()
	var fastGot []*observerpb.GetFlowsResponse
	// The reader goes on while slow's buffer is full; fast reads each flow.
	for i := 1; i <= 10; i++ {
		send(t, h, src, i, i)
		fastGot = append(fastGot, take(t, fast, 1)...)
	}
	if st := h.Stats(); st.LostSubscriber != 6 {
		t.Fatalf("Stats = %+v, want 6 lost for the slow subscriber", st)
	}
	if got := ports(take(t, slow, 4)); got != "1 2 3 4" {
		t.Fatalf("slow subscriber's buffer: %s", got)
	}
	send(t, h, src, 11, 11)
	if got := ports(take(t, slow, 2)); got != "lost:OBSERVER_EVENTS_QUEUE:6 11" {
		t.Errorf("slow subscriber after the gap: %s", got)
	}
	fastGot = append(fastGot, take(t, fast, 1)...)
	if got := ports(fastGot); got != "1 2 3 4 5 6 7 8 9 10 11" {
		t.Errorf("fast subscriber: %s", got)
	}
	m := gather(t, h)
	if m[`hubble_lost_events_total{source="observer_events_queue"}`] != 6 || m["clustermesh_flow_subscribers"] != 2 {
		t.Errorf("metrics: %v", m)
	}
}

// Events the datapath lost are reported to every follower.
func TestHubLostDatapath(t *testing.T) {
	h, src := runHub(t, Config{LostInterval: time.Millisecond})
	sub := h.Subscribe(last(0, true, verdictIs(flowpb.Verdict_DROPPED)))
	defer sub.Close()
	send(t, h, src, 2, 2)
	src.lost.Store(5)
	if got := ports(take(t, sub, 2)); got != "2 lost:PERF_EVENT_RING_BUFFER:5" {
		t.Errorf("events: %s", got)
	}
	src.lost.Store(7)
	testenv.WaitFor(t, 5*time.Second, "the hub to see 7 lost", func() bool { return h.Stats().LostDatapath == 7 })
	send(t, h, src, 4, 4)
	if got := ports(take(t, sub, 2)); got != "lost:PERF_EVENT_RING_BUFFER:2 4" {
		t.Errorf("events: %s", got)
	}
	if st := h.Stats(); st.LostDatapath != 7 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestHubRunEnds(t *testing.T) {
	h, src := NewHub(Config{Enricher: testEnricher{}}), newChanSource()
	sub := h.Subscribe(last(0, true, nil)) // before Run: waits for it
	done := make(chan error, 1)
	go func() { done <- h.Run(context.Background(), src) }()
	src.ch <- numbered(1)
	if got := ports(take(t, sub, 1)); got != "1" {
		t.Fatalf("events: %s", got)
	}
	close(src.ch)
	if err := <-done; !errors.Is(err, errSourceClosed) || !strings.HasPrefix(err.Error(), "reading flows: ") {
		t.Fatalf("Run = %v, want the source's error", err)
	}
	if got := ports(drain(t, sub)); got != "" {
		t.Errorf("after Run: %s", got)
	}
	// The kept flows stay readable; following ends after them.
	if got := ports(drain(t, h.Subscribe(Query{Number: 10, Follow: true}))); got != "1" {
		t.Errorf("follow after Run: %s", got)
	}
	if err := h.Run(context.Background(), src); err == nil {
		t.Error("a second Run succeeded")
	}
}

func TestHubMetrics(t *testing.T) {
	h, src := runHub(t, Config{LostInterval: time.Millisecond, Capacity: 6})
	send(t, h, src, 1, 7)
	src.lost.Store(3)
	slow := h.Subscribe(Query{Follow: true})
	defer slow.Close()
	testenv.WaitFor(t, 5*time.Second, "the lost count", func() bool { return h.Stats().LostDatapath == 3 })
	want := map[string]float64{
		`hubble_flows_seen_total`:                                   7,
		`hubble_lost_events_total{source="observer_events_queue"}`:  0,
		`hubble_lost_events_total{source="perf_event_ring_buffer"}`: 3,
		`clustermesh_flow_subscribers`:                              1,
		`clustermesh_flow_ring_flows`:                               6,
		`clustermesh_flow_ring_capacity`:                            6,
	}
	if got := gather(t, h); !maps.Equal(got, want) {
		t.Errorf("metrics:\n got %v\nwant %v", got, want)
	}
}

// gather returns h's metrics as name{label="value",...} → value, labels
// sorted by name.
func gather(t *testing.T, h *Hub) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(h.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			name := mf.GetName()
			if len(ls) > 0 {
				name += "{" + strings.Join(ls, ",") + "}"
			}
			v := m.GetCounter().GetValue()
			if m.GetGauge() != nil {
				v = m.GetGauge().GetValue()
			}
			out[name] = v
		}
	}
	return out
}

// Pod lookups see unmapped addresses.
func TestHubEnrichesMappedAddresses(t *testing.T) {
	h, src := runHub(t, Config{})
	f := numbered(1)
	f.Dst = netip.AddrPortFrom(netip.AddrFrom16(netip.MustParseAddr("10.1.1.11").As16()), 8080)
	src.ch <- f
	testenv.WaitFor(t, 5*time.Second, "the flow", func() bool { return h.Stats().Flows == 1 })
	evs := drain(t, h.Subscribe(Query{Number: 1}))
	if len(evs) != 1 || evs[0].GetFlow().GetDestination().GetPodName() != "checkout-0" {
		t.Fatalf("got %s", ports(evs))
	}
}
