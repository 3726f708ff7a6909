package l7http

import (
	"bufio"
	"context"
	"io"
	"math"
	"net"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// TestFiguresL7HTTP prints the HTTP proxy's figures (make bench), each
// against the direct path measured in the same run, with the same real
// net/http server and clients on loopback (client, proxy and server share
// the machine's 2 cores):
//
//   - l7.http.added_p50_us, l7.http.added_p99_us: the latency one keep-alive
//     client's GET gains through the proxy (a GET rule matched, flows
//     built), in rounds through the proxy and direct alternating.
//   - l7.http.rps_ratio: requests per second of 4 keep-alive clients through
//     the proxy ÷ direct, alternating rounds.
//   - l7.proxy.bytes_per_idle_conn: heap and stacks per idle proxied
//     connection (after one request each, its upstream connection kept
//     open): the growth with N proxied connections minus the growth with N
//     direct ones, over N.
func TestFiguresL7HTTP(t *testing.T) {
	figure.Require(t)
	h := newHarness(t, Config{}, []PortRuleHTTP{{Method: "GET", Path: "/v1/.*"}}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok"))
	}))
	h.p.cfg.OnFlow = func(*flowpb.Flow) {} // built, not kept
	direct, proxied := directClient(t, h.srv.Listener.Addr().String()), h.client()

	// One GET direct, one through the proxy, and so on: the machine's
	// other load weighs on both alike.
	var lat [2][]time.Duration // direct, proxied
	for range 5000 {
		for i, c := range []*http.Client{direct, proxied} {
			start := time.Now()
			get(t, c)
			lat[i] = append(lat[i], time.Since(start))
		}
	}
	p50 := quantile(lat[1], 0.5) - quantile(lat[0], 0.5)
	p99 := quantile(lat[1], 0.99) - quantile(lat[0], 0.99)
	t.Logf("direct p50 %v p99 %v; proxied p50 %v p99 %v", quantile(lat[0], 0.5), quantile(lat[0], 0.99), quantile(lat[1], 0.5), quantile(lat[1], 0.99))

	var n [2]int
	for range 10 {
		for i, c := range []*http.Client{direct, proxied} {
			n[i] += requestsIn(t, c, 4, 300*time.Millisecond)
		}
	}
	t.Logf("4 keep-alive clients, 3 s each: %d requests direct (%.0f/s), %d through the proxy (%.0f/s)", n[0], float64(n[0])/3, n[1], float64(n[1])/3)

	const conns = 300
	perDirect := idleBytes(t, h, h.srv.Listener.Addr().String(), conns)
	perProxied := idleBytes(t, h, h.addr, conns)
	t.Logf("%d idle connections: %.0f B each direct, %.0f B each through the proxy", conns, perDirect, perProxied)

	figure.Print("l7.http.added_p50_us", math.Round(float64(p50)/float64(time.Microsecond)), "us")
	figure.Print("l7.http.added_p99_us", math.Round(float64(p99)/float64(time.Microsecond)), "us")
	figure.Print("l7.http.rps_ratio", math.Round(float64(n[1])/float64(n[0])*100)/100, "ratio")
	figure.Print("l7.proxy.bytes_per_idle_conn", math.Round(perProxied-perDirect), "B")
}

func directClient(t testing.TB, addr string) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
		MaxIdleConnsPerHost: 8, DisableCompression: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func get(t testing.TB, c *http.Client) {
	resp, err := c.Get("http://cart/v1/cart")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1))]
}

// requestsIn is how many GETs workers keep-alive clients complete in d.
func requestsIn(t testing.TB, c *http.Client, workers int, d time.Duration) int {
	var mu sync.Mutex
	total := 0
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 0
			for time.Now().Before(end) {
				get(t, c)
				n++
			}
			mu.Lock()
			total += n
			mu.Unlock()
		}()
	}
	wg.Wait()
	return total
}

// idleBytes opens n connections to addr, each after one GET, and returns
// the heap and stack growth per connection once they are idle.
func idleBytes(t testing.TB, h *harness, addr string, n int) float64 {
	open := h.p.Stats().Open
	before := memInUse()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		testenv.WaitFor(t, 10*time.Second, "proxied connections closed", func() bool { return h.p.Stats().Open == open })
	}()
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		c.Write([]byte("GET /v1/cart HTTP/1.1\r\nHost: cart\r\n\r\n"))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
	}
	testenv.WaitFor(t, 10*time.Second, "proxied connections idle", func() bool { s := h.p.Stats(); return s.Open == s.Idle })
	return float64(memInUse()-before) / float64(n)
}

// memInUse is heap and stacks after a few collections (stacks shrink by
// half at each: a long-idle connection's goroutine has had many).
func memInUse() int64 {
	var ms runtime.MemStats
	for range 5 {
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc + ms.StackInuse)
}
