package l7http

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// TestDeniedBodiesKeepOrCloseTheConnection: a denied chunked body is read
// and the connection goes on; a denied request expecting 100-continue, or
// with a body over MaxDrainBytes, gets the 403 with Connection: close.
func TestDeniedBodiesKeepOrCloseTheConnection(t *testing.T) {
	var served atomic.Int64
	h := newHarness(t, Config{MaxDrainBytes: 1024}, cartRules, echo(&served))
	c := h.dialRaw()
	c.send(t, "POST /v1/cart HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
	if resp, _ := c.response(t, "POST"); resp.StatusCode != 403 || resp.Close {
		t.Fatalf("denied chunked POST: %d close=%v", resp.StatusCode, resp.Close)
	}
	c.send(t, "GET /v1/cart HTTP/1.1\r\nHost: a\r\n\r\n")
	if resp, _ := c.response(t, "GET"); resp.StatusCode != 200 {
		t.Fatalf("GET after a denied chunked POST: %d", resp.StatusCode)
	}
	for _, req := range []string{
		"POST /v1/cart HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
		"POST /v1/cart HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n",
	} {
		c := h.dialRaw()
		c.send(t, req)
		if resp, body := c.response(t, "POST"); resp.StatusCode != 403 || !resp.Close || body != "Access denied\r\n" || !c.closed(t) {
			t.Fatalf("%q: %d close=%v %q", req, resp.StatusCode, resp.Close, body)
		}
	}
	if served.Load() != 1 {
		t.Fatalf("served %d", served.Load())
	}
}

// TestPolicyUpdateAppliesToOpenConnections: rules swapped while a
// connection is open apply from its next request.
func TestPolicyUpdateAppliesToOpenConnections(t *testing.T) {
	var served atomic.Int64
	h := newHarness(t, Config{}, cartRules, echo(&served))
	c := h.dialRaw()
	c.send(t, "GET /v1/cart HTTP/1.1\r\nHost: a\r\n\r\n")
	if resp, _ := c.response(t, "GET"); resp.StatusCode != 200 {
		t.Fatalf("before: %d", resp.StatusCode)
	}
	if err := h.meta.Policy.Update([]PortRuleHTTP{{Method: "POST"}}); err != nil {
		t.Fatal(err)
	}
	c.send(t, "GET /v1/cart HTTP/1.1\r\nHost: a\r\n\r\n")
	if resp, _ := c.response(t, "GET"); resp.StatusCode != 403 {
		t.Fatalf("after: %d, want 403", resp.StatusCode)
	}
}

// TestServerClosedKeptConnection: the server closes its idle connection to
// the proxy; the client's next request on its kept connection is sent on a
// new one.
func TestServerClosedKeptConnection(t *testing.T) {
	var closed atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	srv.Config.IdleTimeout = 50 * time.Millisecond
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	h := newHarness(t, Config{}, nil, http.NotFoundHandler())
	dst := srv.Listener.Addr().String()
	h.meta.Destination = netip.MustParseAddrPort(dst)
	h.addr = h.startProxy(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", dst)
	})
	c := h.dialRaw()
	for i := range 2 {
		c.send(t, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		if resp, body := c.response(t, "GET"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		testenv.WaitFor(t, 10*time.Second, "the server closing its idle connection", func() bool { return closed.Load() == int64(i+1) })
	}
}

// TestServeEndsWithContext: Serve returns, and closes both connections,
// when its context is done, whatever it is waiting for.
func TestServeEndsWithContext(t *testing.T) {
	h := newHarness(t, Config{}, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- h.p.Serve(ctx, server, h.meta, func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", h.meta.Destination.String())
		})
	}()
	client.Write([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
	r := &raw{Conn: client, br: bufio.NewReader(client)}
	if resp, _ := r.response(t, "GET"); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve still running 10 s after its context ended")
	}
	if !r.closed(t) {
		t.Fatal("the client connection is open")
	}
}
