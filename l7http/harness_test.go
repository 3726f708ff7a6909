package l7http

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// harness is a real net/http server behind the proxy, on loopback: the
// proxy's listener accepts and Serves each connection with the server as
// its original destination.
type harness struct {
	t       testing.TB
	p       *Proxy
	srv     *httptest.Server
	addr    string // the proxy's
	meta    Meta
	mu      sync.Mutex
	flows   []*flowpb.Flow
	serveMu sync.Mutex
	errs    []error
}

// newHarness starts handler's server and the proxy in front of it with
// cfg (OnFlow set by the harness) and rules; all stopped when t ends.
func newHarness(t testing.TB, cfg Config, rules []PortRuleHTTP, handler http.Handler) *harness {
	t.Helper()
	h := &harness{t: t}
	h.srv = httptest.NewServer(handler)
	t.Cleanup(h.srv.Close)
	cfg.OnFlow = func(f *flowpb.Flow) {
		h.mu.Lock()
		h.flows = append(h.flows, f)
		h.mu.Unlock()
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.p = p
	pol, err := NewPolicy(rules)
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddrPort(h.srv.Listener.Addr().String())
	h.meta = Meta{Destination: dst, SourceIdentity: 70001, DestinationIdentity: 70002, EndpointID: 42, Direction: Ingress, Policy: pol}
	h.addr = h.startProxy(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", dst.String())
	})
	return h
}

// startProxy listens on loopback and serves every connection with dial.
func (h *harness) startProxy(dial DialFunc) string {
	t := h.t
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			meta := h.meta
			meta.Source = netip.MustParseAddrPort(c.RemoteAddr().String())
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := h.p.Serve(ctx, c, meta, dial); err != nil {
					h.serveMu.Lock()
					h.errs = append(h.errs, err)
					h.serveMu.Unlock()
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		cancel()
		wg.Wait()
	})
	return ln.Addr().String()
}

// client is an http.Client through the proxy, its idle connections closed
// when the test ends.
func (h *harness) client() *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", h.addr)
		},
		MaxIdleConnsPerHost: 8, DisableCompression: true, ExpectContinueTimeout: 30 * time.Second,
	}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// raw is one raw TCP connection to the proxy.
type raw struct {
	net.Conn
	br *bufio.Reader
}

func (h *harness) dialRaw() *raw {
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return &raw{Conn: c, br: bufio.NewReader(c)}
}

func (r *raw) send(t testing.TB, s string) {
	t.Helper()
	if _, err := r.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
}

// response reads one response (to a request of method) with its body.
func (r *raw) response(t testing.TB, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(r.br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading a response: %v", err)
	}
	var b strings.Builder
	if _, err := bufio.NewReader(resp.Body).WriteTo(&b); err != nil {
		t.Fatalf("reading a response body: %v", err)
	}
	resp.Body.Close()
	return resp, b.String()
}

// closed reports whether the proxy closed the connection (EOF after what
// was read).
func (r *raw) closed(t testing.TB) bool {
	t.Helper()
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := r.br.ReadByte()
	return err != nil
}

// waitFlows waits for n flows and returns them.
func (h *harness) waitFlows(n int) []*flowpb.Flow {
	h.t.Helper()
	testenv.WaitFor(h.t, 10*time.Second, "flows", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.flows) >= n
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*flowpb.Flow(nil), h.flows...)
}

func (h *harness) takeFlows() []*flowpb.Flow {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.flows
	h.flows = nil
	return f
}

// flowSummary is "REQUEST FORWARDED GET /path" or "RESPONSE FORWARDED 200".
func flowSummary(f *flowpb.Flow) string {
	l7 := f.GetL7()
	hp := l7.GetHttp()
	if l7.GetType() == flowpb.L7FlowType_RESPONSE {
		return "RESPONSE " + f.GetVerdict().String() + " " + strconv.Itoa(int(hp.GetCode()))
	}
	u := hp.GetUrl()
	if i := strings.Index(u, "://"); i >= 0 {
		u = u[i+3:]
		if j := strings.IndexByte(u, '/'); j >= 0 {
			u = u[j:]
		}
	}
	return "REQUEST " + f.GetVerdict().String() + " " + hp.GetMethod() + " " + u
}

func (h *harness) serveErrors() []error {
	h.serveMu.Lock()
	defer h.serveMu.Unlock()
	return append([]error(nil), h.errs...)
}
