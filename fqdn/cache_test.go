package fqdn

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// clock is a settable clock for Config.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// recorder collects a subscription's changes.
type recorder struct {
	mu      sync.Mutex
	changes []Change
}

func (r *recorder) fn(ch Change) { r.mu.Lock(); r.changes = append(r.changes, ch); r.mu.Unlock() }
func (r *recorder) take() []Change {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.changes
	r.changes = nil
	return out
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func newTestCache(t *testing.T, cfg Config) (*Cache, *clock) {
	t.Helper()
	clk := &clock{now: time.Unix(1_000_000, 0)}
	cfg.Now = clk.Now
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, clk
}

func wantChange(t *testing.T, got []Change, added, removed []netip.Addr) {
	t.Helper()
	if len(got) != 1 || !slices.Equal(got[0].Added, added) || !slices.Equal(got[0].Removed, removed) {
		t.Fatalf("changes %+v, want one adding %v and removing %v", got, added, removed)
	}
}

func TestCacheNotifiesAndExpires(t *testing.T) {
	c, clk := newTestCache(t, Config{MinTTL: 10 * time.Second})
	var r, other recorder
	cancel, err := c.Subscribe(Selector{MatchPattern: "*.example.com"}, r.fn)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	cancelOther, _ := c.Subscribe(Selector{MatchName: "db.example.org"}, other.fn)
	defer cancelOther()

	c.Update("WWW.example.com.", addrs("10.0.0.2", "10.0.0.1"), time.Second) // raised to MinTTL
	wantChange(t, r.take(), addrs("10.0.0.1", "10.0.0.2"), nil)
	c.Update("api.example.com", addrs("10.0.0.2", "fd00::1"), time.Minute)
	wantChange(t, r.take(), addrs("fd00::1"), nil) // 10.0.0.2 was selected already
	if got := other.take(); len(got) != 0 {
		t.Fatalf("a selector matching no name was told %+v", got)
	}
	if got := c.Lookup("www.EXAMPLE.com"); !slices.Equal(got, addrs("10.0.0.1", "10.0.0.2")) {
		t.Fatalf("lookup: %v", got)
	}
	if got := c.NamesOf(netip.MustParseAddr("::ffff:10.0.0.2")); !slices.Equal(got, []string{"api.example.com.", "www.example.com."}) {
		t.Fatalf("names of 10.0.0.2: %v", got)
	}

	// At 10 s www's addresses end; 10.0.0.2 stays (api holds it for a minute).
	if n := c.Expire(clk.Add(9 * time.Second)); n != 0 {
		t.Fatalf("expired %d before the minimum TTL", n)
	}
	if n := c.Expire(clk.Add(time.Second)); n != 2 {
		t.Fatalf("expired %d at the minimum TTL, want www's 2", n)
	}
	wantChange(t, r.take(), nil, addrs("10.0.0.1"))
	if got := c.NamesOf(netip.MustParseAddr("10.0.0.2")); !slices.Equal(got, []string{"api.example.com."}) {
		t.Fatalf("names of 10.0.0.2 after www expired: %v", got)
	}
	if c.Lookup("www.example.com") != nil || c.Stats().Names != 1 {
		t.Fatalf("www still held: %+v", c.Stats())
	}
	// A later answer extends, an earlier one does not shorten.
	c.Update("api.example.com", addrs("fd00::1"), time.Hour)
	c.Update("api.example.com", addrs("fd00::1"), time.Second)
	c.Expire(clk.Add(time.Minute))
	wantChange(t, r.take(), nil, addrs("10.0.0.2"))
	c.Expire(clk.Add(time.Hour))
	wantChange(t, r.take(), nil, addrs("fd00::1"))
	if st := c.Stats(); st.Names != 0 || st.IPs != 0 || st.Expired != 4 || len(c.byIP) != 0 {
		t.Fatalf("stats after every expiry: %+v", st)
	}
}

func TestCacheSubscribeSeesHeldAddresses(t *testing.T) {
	c, _ := newTestCache(t, Config{})
	c.Update("a.example.com", addrs("10.0.0.1"), time.Minute)
	c.Update("b.example.com", addrs("10.0.0.1", "10.0.0.3"), time.Minute)
	var r recorder
	cancel, err := c.Subscribe(Selector{MatchPattern: "**.example.com"}, r.fn)
	if err != nil {
		t.Fatal(err)
	}
	wantChange(t, r.take(), addrs("10.0.0.1", "10.0.0.3"), nil)
	cancel()
	cancel()
	c.Update("c.example.com", addrs("10.0.0.9"), time.Minute)
	if got := r.take(); len(got) != 0 {
		t.Fatalf("told after cancel: %+v", got)
	}
	if _, err := c.Subscribe(Selector{}, r.fn); !errors.Is(err, ErrEmptySelector) {
		t.Fatalf("empty selector: %v", err)
	}
}

func TestCacheBounds(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, clk := newTestCache(t, Config{MaxIPsPerName: 2, MaxNames: 2, Registerer: reg})
	var r recorder
	cancel, _ := c.Subscribe(Selector{MatchPattern: "*"}, r.fn)
	defer cancel()
	c.Update("a.io", addrs("10.0.0.1"), time.Minute)
	clk.Add(time.Second)
	c.Update("a.io", addrs("10.0.0.2", "10.0.0.3"), time.Minute) // 10.0.0.1 expires first: evicted
	if got := c.Lookup("a.io"); !slices.Equal(got, addrs("10.0.0.2", "10.0.0.3")) {
		t.Fatalf("after the per-name bound: %v", got)
	}
	r.take()
	c.Update("b.io", addrs("10.0.1.1"), time.Minute)
	c.Update("a.io", addrs("10.0.0.2"), time.Minute) // a is the most recent now
	r.take()
	c.Update("c.io", addrs("10.0.2.1"), time.Minute) // b, the least recent, goes
	wantChange(t, r.take(), addrs("10.0.2.1"), addrs("10.0.1.1"))
	st := c.Stats()
	if st.Names != 2 || st.EvictedNames != 1 || st.EvictedIPsPerName != 1 || c.Lookup("b.io") != nil {
		t.Fatalf("after the names bound: %+v", st)
	}
	for reason, want := range map[string]float64{"ips_per_name": 1, "names": 1} {
		if got := testutil.ToFloat64(c.m.evictions.WithLabelValues(reason)); got != want {
			t.Errorf("evictions{%s} = %v, want %v", reason, got, want)
		}
	}
}

func TestCacheRunExpires(t *testing.T) {
	c, err := New(Config{MinTTL: 20 * time.Millisecond, MaxTTL: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var r recorder
	cancel, _ := c.Subscribe(Selector{MatchName: "a.io"}, r.fn)
	defer cancel()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	defer func() { stop(); <-done }()
	c.Update("a.io", addrs("10.0.0.1"), time.Hour)
	testenv.WaitFor(t, 5*time.Second, "a.io's address expired by Run", func() bool { return c.Stats().IPs == 0 })
	got := r.take()
	if len(got) != 2 || !slices.Equal(got[1].Removed, addrs("10.0.0.1")) {
		t.Fatalf("changes %+v", got)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, cfg := range []Config{{MinTTL: -1}, {MinTTL: time.Hour, MaxTTL: time.Minute}, {MaxNames: -1}, {MaxIPsPerName: -2}} {
		if _, err := New(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
}

func TestCacheHeapCompacts(t *testing.T) {
	c, _ := newTestCache(t, Config{})
	for i := 0; i < 5000; i++ {
		c.Update("a.io", addrs("10.0.0.1"), time.Minute+time.Duration(i)*time.Second)
	}
	if n := c.Stats().ExpiryHeapLen; n > 2*1+1024+1 {
		t.Fatalf("expiry heap holds %d items for one address", n)
	}
}

func BenchmarkCacheUpdate(b *testing.B) {
	c, _ := New(Config{})
	for i := 0; i < 100; i++ {
		cancel, _ := c.Subscribe(Selector{MatchPattern: "*.example.com"}, func(Change) {})
		defer cancel()
	}
	ips := addrs("10.0.0.1", "10.0.0.2")
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		c.Update("www.example.com", ips, time.Duration(i)*time.Millisecond)
	}
}
