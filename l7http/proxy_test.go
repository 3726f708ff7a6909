package l7http

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// cartRules allow GET on /v1/... and nothing else.
var cartRules = []PortRuleHTTP{{Method: "GET", Path: "/v1/.*"}}

// echo answers with the request's method, path and body; it counts requests.
func echo(n *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.RequestURI(), body)
	})
}

func TestKeepAliveAcrossAllowedAndDeniedRequests(t *testing.T) {
	var served atomic.Int64
	h := newHarness(t, Config{}, cartRules, echo(&served))
	c := h.dialRaw()
	c.send(t, "GET /v1/cart HTTP/1.1\r\nHost: cart\r\n\r\n")
	if resp, body := c.response(t, "GET"); resp.StatusCode != 200 || body != "GET /v1/cart " {
		t.Fatalf("allowed GET: %d %q", resp.StatusCode, body)
	}
	c.send(t, "POST /v1/cart HTTP/1.1\r\nHost: cart\r\nContent-Length: 5\r\n\r\nhello")
	resp, body := c.response(t, "POST")
	if resp.StatusCode != 403 || body != "Access denied\r\n" || resp.Close {
		t.Fatalf("denied POST: %d %q close=%v, want 403 %q on a kept connection", resp.StatusCode, body, resp.Close, "Access denied\r\n")
	}
	c.send(t, "GET /v1/cart?id=2 HTTP/1.1\r\nHost: cart\r\n\r\n")
	if resp, body := c.response(t, "GET"); resp.StatusCode != 200 || body != "GET /v1/cart?id=2 " {
		t.Fatalf("GET after the denied POST: %d %q", resp.StatusCode, body)
	}
	if served.Load() != 2 {
		t.Fatalf("the server got %d requests, want the 2 allowed ones", served.Load())
	}
	var got []string
	for _, f := range h.waitFlows(5) {
		got = append(got, flowSummary(f))
	}
	want := []string{"REQUEST FORWARDED GET /v1/cart", "RESPONSE FORWARDED 200", "REQUEST DROPPED POST /v1/cart",
		"REQUEST FORWARDED GET /v1/cart?id=2", "RESPONSE FORWARDED 200"}
	if !slices.Equal(got, want) {
		t.Fatalf("flows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestChunkedBothWaysStreamed(t *testing.T) {
	gotFirst := make(chan struct{})
	h := newHarness(t, Config{}, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil || r.TransferEncoding == nil {
			http.Error(w, fmt.Sprintf("body %v, transfer encoding %v", err, r.TransferEncoding), 500)
			return
		}
		w.Write([]byte("first|"))
		w.(http.Flusher).Flush()
		<-gotFirst // the client has the first chunk before the server writes the rest
		w.Write(body)
	}))
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	// A body of unknown length is sent chunked.
	resp, err := h.client().Post("http://cart/upload", "application/octet-stream", io.MultiReader(bytes.NewReader(payload)))
	if err != nil {
		t.Fatal(err, h.serveErrors())
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !slices.Equal(resp.TransferEncoding, []string{"chunked"}) {
		t.Fatalf("response %d, transfer encoding %v", resp.StatusCode, resp.TransferEncoding)
	}
	first := make([]byte, len("first|"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first|" {
		t.Fatalf("first chunk %q: %v", first, err)
	}
	close(gotFirst)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(rest, payload) {
		t.Fatalf("echoed body: %d bytes, %v; want the %d sent", len(rest), err, len(payload))
	}
}

func TestPipelinedRequestsAnsweredInOrder(t *testing.T) {
	var served atomic.Int64
	h := newHarness(t, Config{}, cartRules, echo(&served))
	c := h.dialRaw()
	c.send(t, "GET /v1/a HTTP/1.1\r\nHost: cart\r\n\r\n"+
		"DELETE /v1/a HTTP/1.1\r\nHost: cart\r\nContent-Length: 5\r\n\r\nhello"+
		"GET /v1/b HTTP/1.1\r\nHost: cart\r\n\r\n"+
		"GET /v1/c HTTP/1.1\r\nHost: cart\r\nConnection: close\r\n\r\n")
	for _, want := range []struct {
		code int
		body string
	}{{200, "GET /v1/a "}, {403, "Access denied\r\n"}, {200, "GET /v1/b "}, {200, "GET /v1/c "}} {
		resp, body := c.response(t, "GET")
		if resp.StatusCode != want.code || body != want.body {
			t.Fatalf("pipelined response %d %q, want %d %q", resp.StatusCode, body, want.code, want.body)
		}
	}
	if !c.closed(t) {
		t.Fatal("the connection stays open after Connection: close")
	}
}

func TestExpectContinue(t *testing.T) {
	h := newHarness(t, Config{}, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/refuse" {
			http.Error(w, "no", http.StatusUnauthorized) // answers without reading: no 100 Continue
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Write(body)
	}))
	// The client waits for the interim response before it sends the
	// body: it must come through the proxy.
	up := h.dialRaw()
	up.send(t, "PUT /upload HTTP/1.1\r\nHost: cart\r\nExpect: 100-continue\r\nContent-Length: 7\r\n\r\n")
	if resp, _ := up.response(t, "PUT"); resp.StatusCode != http.StatusContinue {
		t.Fatalf("/upload: %d before the body, want 100 Continue", resp.StatusCode)
	}
	up.send(t, "payload")
	if resp, body := up.response(t, "PUT"); resp.StatusCode != http.StatusOK || body != "payload" {
		t.Fatalf("/upload: %d %q", resp.StatusCode, body)
	}
	// A server that answers without reading sends no 100 Continue: the
	// client gets its answer and never sends the body.
	refuse := h.dialRaw()
	refuse.send(t, "PUT /refuse HTTP/1.1\r\nHost: cart\r\nExpect: 100-continue\r\nContent-Length: 7\r\n\r\n")
	if resp, _ := refuse.response(t, "PUT"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("/refuse: %d, want 401 without a 100 Continue", resp.StatusCode)
	}
}

func TestResponsesWithoutBodies(t *testing.T) {
	h := newHarness(t, Config{}, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(204)
		case "/304":
			w.WriteHeader(304)
		default:
			w.Header().Set("Content-Length", "11")
			w.Write([]byte("hello world"))
		}
	}))
	c := h.dialRaw()
	for _, tc := range []struct{ method, path string }{{"HEAD", "/x"}, {"GET", "/204"}, {"GET", "/304"}, {"GET", "/x"}} {
		c.send(t, tc.method+" "+tc.path+" HTTP/1.1\r\nHost: cart\r\n\r\n")
		resp, body := c.response(t, tc.method)
		wantBody := ""
		if tc.method == "GET" && tc.path == "/x" {
			wantBody = "hello world"
		}
		if body != wantBody {
			t.Fatalf("%s %s: %d %q, want %q", tc.method, tc.path, resp.StatusCode, body, wantBody)
		}
	}
}

func TestUpgradeIsRemoved(t *testing.T) {
	h := newHarness(t, Config{}, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "upgrade=%q connection=%q", r.Header.Get("Upgrade"), r.Header.Get("Connection"))
	}))
	c := h.dialRaw()
	c.send(t, "GET /ws HTTP/1.1\r\nHost: cart\r\nConnection: Upgrade, keep-alive\r\nUpgrade: websocket\r\n\r\n")
	if _, body := c.response(t, "GET"); body != `upgrade="" connection="keep-alive"` {
		t.Fatalf("the server saw %s", body)
	}
}

func TestUnreachableDestination(t *testing.T) {
	h := newHarness(t, Config{}, nil, http.NotFoundHandler())
	h.srv.Close() // nothing listens at the original destination any more
	c := h.dialRaw()
	c.send(t, "GET / HTTP/1.1\r\nHost: cart\r\n\r\n")
	if resp, _ := c.response(t, "GET"); resp.StatusCode != 503 {
		t.Fatalf("status %d, want 503", resp.StatusCode)
	}
	fs := h.waitFlows(2)
	if r := fs[1]; r.GetVerdict() != flowpb.Verdict_ERROR || r.GetL7().GetHttp().GetCode() != 503 {
		t.Fatalf("response flow %v", r)
	}
}
