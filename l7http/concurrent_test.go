package l7http

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestConcurrentClients: 16 clients on kept connections, allowed and
// denied requests with and without bodies (chunked too), each answer
// checked.
func TestConcurrentClients(t *testing.T) {
	h := newHarness(t, Config{}, []PortRuleHTTP{{Method: "GET", Path: "/v1/.*"}, {Method: "PUT", Path: "/v1/upload"}},
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%s %s %d", r.Method, r.URL.Path, len(body))
		}))
	cl := h.client()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 30 {
				var req *http.Request
				want, code := "", 200
				switch i % 3 {
				case 0:
					req, _ = http.NewRequest("GET", fmt.Sprintf("http://cart/v1/%d/%d", g, i), nil)
					want = fmt.Sprintf("GET /v1/%d/%d 0", g, i)
				case 1:
					body := strings.Repeat("x", 1000*i)
					req, _ = http.NewRequest("PUT", "http://cart/v1/upload", io.MultiReader(strings.NewReader(body))) // chunked
					want = fmt.Sprintf("PUT /v1/upload %d", len(body))
				case 2:
					req, _ = http.NewRequest("POST", "http://cart/v1/x", bytes.NewReader(make([]byte, 500)))
					want, code = "Access denied\r\n", 403
				}
				resp, err := cl.Do(req)
				if err != nil {
					errs <- err
					return
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != code || string(got) != want {
					errs <- fmt.Errorf("%s %s: %d %q, want %d %q", req.Method, req.URL.Path, resp.StatusCode, got, code, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestServerAnswersBeforeTheBody: a server refusing a large upload without
// reading it is answered to the client at once; the connection then ends.
func TestServerAnswersBeforeTheBody(t *testing.T) {
	h := newHarness(t, Config{}, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	}))
	c := h.dialRaw()
	c.send(t, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\n")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent atomic.Int64
	wg.Add(1)
	go func() { // the client goes on sending its body until the proxy closes
		defer wg.Done()
		chunk := make([]byte, 64<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c.SetWriteDeadline(time.Now().Add(time.Second))
			n, err := c.Write(chunk)
			sent.Add(int64(n))
			if err != nil && !isTimeout(err) {
				return
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	if resp, _ := c.response(t, "POST"); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// The answer came while most of the body was still unsent: the proxy
	// relayed it at once rather than after the whole upload.
	if n := sent.Load(); n >= 100000000 {
		t.Fatalf("answered only after the whole body (%d bytes) was sent", n)
	}
	if !c.closed(t) {
		t.Fatal("the connection stays open")
	}
}

func isTimeout(err error) bool {
	te, ok := err.(interface{ Timeout() bool })
	return ok && te.Timeout()
}
