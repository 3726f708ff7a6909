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

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/datapath"
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
	return dpFlow(fmt.Sprintf("10.2.1.5:%d", i), 132000, 2, "10.1.1.11:8080", 70001, 1, v)
}

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
func ports(evs []Event) string {
	var s []string
	for _, ev := range evs {
		if ev.Lost != nil {
			s = append(s, fmt.Sprintf("lost:%s:%d", ev.Lost.Source, ev.Lost.Count))
		} else {
			s = append(s, fmt.Sprint(ev.Flow.Source.Port))
		}
	}
	return strings.Join(s, " ")
}

// drain reads a subscription until it ends.
func drain(t *testing.T, s *Subscription) []Event {
	t.Helper()
	var evs []Event
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
func take(t *testing.T, s *Subscription, n int) []Event {
	t.Helper()
	var evs []Event
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
	if got := ports(drain(t, h.Subscribe(Filter{}, 3, false))); got != "" {
		t.Fatalf("empty hub: %s", got)
	}
	send(t, h, src, 1, 8) // the ring keeps 4..8
	for _, tc := range []struct {
		f    Filter
		last int
		want string
	}{
		{Filter{}, 3, "6 7 8"},
		{Filter{}, -1, "4 5 6 7 8"},
		{Filter{}, 100, "4 5 6 7 8"},
		{Filter{}, 0, ""},
		{Filter{Verdict: VerdictDropped}, 2, "6 8"},
		{Filter{Verdict: VerdictForwarded}, -1, "5 7"},
		{Filter{FromCluster: "east"}, -1, ""},
	} {
		if got := ports(drain(t, h.Subscribe(tc.f, tc.last, false))); got != tc.want {
			t.Errorf("Subscribe(%s, last %d) = %q, want %q", tc.f, tc.last, got, tc.want)
		}
	}
	if st := h.Stats(); st.Flows != 8 || st.Kept != 5 || st.Subscribers != 0 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestHubFanOut(t *testing.T) {
	h, src := runHub(t, Config{})
	send(t, h, src, 1, 2)
	all := h.Subscribe(Filter{}, 1, true)
	defer all.Close()
	dropped := h.Subscribe(Filter{Verdict: VerdictDropped}, 0, true)
	defer dropped.Close()
	none := h.Subscribe(Filter{ToCluster: "west"}, -1, true)
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
	slow := h.Subscribe(Filter{}, 0, true)
	defer slow.Close()
	fast := h.Subscribe(Filter{}, 0, true)
	defer fast.Close()
	var fastGot []Event
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
	if got := ports(take(t, slow, 2)); got != "lost:subscriber:6 11" {
		t.Errorf("slow subscriber after the gap: %s", got)
	}
	fastGot = append(fastGot, take(t, fast, 1)...)
	if got := ports(fastGot); got != "1 2 3 4 5 6 7 8 9 10 11" {
		t.Errorf("fast subscriber: %s", got)
	}
	m := gather(t, h)
	if m["clustermesh_flow_subscriber_lost_total"] != 6 || m["clustermesh_flow_subscribers"] != 2 {
		t.Errorf("metrics: %v", m)
	}
}

// Events the datapath lost are reported to every follower.
func TestHubLostDatapath(t *testing.T) {
	h, src := runHub(t, Config{LostInterval: time.Millisecond})
	sub := h.Subscribe(Filter{Verdict: VerdictDropped}, 0, true)
	defer sub.Close()
	send(t, h, src, 2, 2)
	src.lost.Store(5)
	if got := ports(take(t, sub, 2)); got != "2 lost:datapath:5" {
		t.Errorf("events: %s", got)
	}
	src.lost.Store(7)
	testenv.WaitFor(t, 5*time.Second, "the hub to see 7 lost", func() bool { return h.Stats().LostDatapath == 7 })
	send(t, h, src, 4, 4)
	if got := ports(take(t, sub, 2)); got != "lost:datapath:2 4" {
		t.Errorf("events: %s", got)
	}
	if st := h.Stats(); st.LostDatapath != 7 {
		t.Errorf("Stats = %+v", st)
	}
}

func TestHubRunEnds(t *testing.T) {
	h, src := NewHub(Config{Enricher: testEnricher{}}), newChanSource()
	sub := h.Subscribe(Filter{}, 0, true) // before Run: waits for it
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
	if got := ports(drain(t, h.Subscribe(Filter{}, -1, true))); got != "1" {
		t.Errorf("follow after Run: %s", got)
	}
	if err := h.Run(context.Background(), src); err == nil {
		t.Error("a second Run succeeded")
	}
}

func TestHubMetrics(t *testing.T) {
	h, src := runHub(t, Config{LostInterval: time.Millisecond})
	send(t, h, src, 1, 5) // 3 forwarded, 2 dropped west → east (ingress)
	src.ch <- dpFlow("10.1.1.11:8080", 70001, 1, "192.0.2.1:443", datapath.IdentityWorld, 0, flows.VerdictDropped)
	f := dpFlow("10.1.1.11:8080", 70001, 1, "10.2.1.5:1", 132000, 2, flows.VerdictDropped)
	f.DropReason, f.Direction = flows.DropInvalidPacket, datapath.Egress
	src.ch <- f
	src.lost.Store(3)
	testenv.WaitFor(t, 5*time.Second, "every flow and the lost count", func() bool {
		st := h.Stats()
		return st.Flows == 7 && st.LostDatapath == 3
	})
	want := map[string]float64{
		`clustermesh_flow_drops_total{destination_cluster="east",reason="policy-denied",source_cluster="west"}`:    2,
		`clustermesh_flow_drops_total{destination_cluster="unknown",reason="policy-denied",source_cluster="east"}`: 1,
		`clustermesh_flow_drops_total{destination_cluster="west",reason="invalid-packet",source_cluster="east"}`:   1,
		`clustermesh_flow_events_lost_total`:                               3,
		`clustermesh_flow_subscriber_lost_total`:                           0,
		`clustermesh_flow_subscribers`:                                     0,
		`clustermesh_flow_ring_flows`:                                      7,
		`clustermesh_flows_total{direction="egress",verdict="DROPPED"}`:    1,
		`clustermesh_flows_total{direction="ingress",verdict="DROPPED"}`:   3,
		`clustermesh_flows_total{direction="ingress",verdict="FORWARDED"}`: 3,
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
	evs := drain(t, h.Subscribe(Filter{ToPod: "shop/checkout-0"}, 1, false))
	if len(evs) != 1 {
		t.Fatalf("got %s", ports(evs))
	}
}
