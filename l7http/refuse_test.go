package l7http

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMalformedAndSmugglingRefused sends each bad request on a connection
// of its own: the proxy answers 400, closes, counts the reason, reports an
// ERROR flow, and the server never gets a request.
func TestMalformedAndSmugglingRefused(t *testing.T) {
	var served atomic.Int64
	reg := prometheus.NewRegistry()
	h := newHarness(t, Config{Registerer: reg}, nil, echo(&served))
	for _, tc := range []struct{ name, req, reason string }{
		{"content-length and chunked", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "content_length_and_chunked"},
		{"chunked and content-length", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", "content_length_and_chunked"},
		{"conflicting content-length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", "content_length_conflict"},
		{"conflicting content-length list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 5\r\n\r\nabcde", "content_length_conflict"},
		{"signed content-length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd", "content_length"},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", "obs_fold"},
		{"gzip, chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "transfer_encoding"},
		{"two transfer-encodings", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "transfer_encoding"},
		{"chunked in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "transfer_encoding"},
		{"space before colon", "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", "header_name"},
		{"bare LF", "GET / HTTP/1.1\nHost: a\n\n", "bare_lf"},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "host"},
		{"no host", "GET / HTTP/1.1\r\n\r\n", "host"},
		{"control in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", "header_value"},
		{"absolute form", "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", "target_form"},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "version"},
		{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "request_line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := testutil.ToFloat64(h.p.m.refused.WithLabelValues(tc.reason))
			h.takeFlows()
			c := h.dialRaw()
			c.send(t, tc.req)
			resp, _ := c.response(t, "GET")
			if resp.StatusCode != 400 {
				t.Fatalf("status %d, want 400", resp.StatusCode)
			}
			if !c.closed(t) {
				t.Fatal("the connection stays open after a refused request")
			}
			if got := testutil.ToFloat64(h.p.m.refused.WithLabelValues(tc.reason)) - before; got != 1 {
				t.Fatalf("refused{reason=%q} grew by %v, want 1", tc.reason, got)
			}
			fs := h.waitFlows(1)
			if len(fs) != 1 || fs[0].GetVerdict() != flowpb.Verdict_ERROR || fs[0].GetL7().GetType() != flowpb.L7FlowType_REQUEST {
				t.Fatalf("flows %v, want one ERROR request", fs)
			}
		})
	}
	if n := served.Load(); n != 0 {
		t.Fatalf("the server got %d requests", n)
	}
	if n := testutil.CollectAndCount(reg, "clustermesh_l7_http_refused_total"); n == 0 {
		t.Fatal("refusals not registered")
	}
}

// TestInvalidChunkNeverForwarded: a body's invalid chunk size ends the
// exchange: the server gets the valid chunks before it and never a complete
// body, the client a 400.
func TestInvalidChunkNeverForwarded(t *testing.T) {
	var complete atomic.Int64
	h := newHarness(t, Config{}, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 64)
		n, err := r.Body.Read(buf)
		for err == nil {
			var k int
			k, err = r.Body.Read(buf[n:])
			n += k
		}
		if err.Error() == "EOF" {
			complete.Add(1)
		}
	}))
	for _, size := range []string{"0x4", "-4", "4 4", "fffffffffffffffff", "g", " 4", "4\n"} {
		c := h.dialRaw()
		c.send(t, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n"+size+"\r\nabcd\r\n0\r\n\r\n")
		resp, _ := c.response(t, "POST")
		if resp.StatusCode != 400 || !c.closed(t) {
			t.Fatalf("chunk size %q: status %d, want 400 and closed", size, resp.StatusCode)
		}
	}
	if complete.Load() != 0 {
		t.Fatalf("the server read %d complete bodies", complete.Load())
	}
}

func TestOversizedHeaderRefused(t *testing.T) {
	var served atomic.Int64
	h := newHarness(t, Config{MaxHeaderBytes: 2048}, nil, echo(&served))
	c := h.dialRaw()
	c.send(t, "GET / HTTP/1.1\r\nHost: a\r\nX-Small: "+strings.Repeat("s", 1500)+"\r\n\r\n")
	if resp, _ := c.response(t, "GET"); resp.StatusCode != 200 {
		t.Fatalf("a header section under the limit: %d", resp.StatusCode)
	}
	c.send(t, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: "+strings.Repeat("b", 5000)+"\r\n\r\n")
	if resp, _ := c.response(t, "GET"); resp.StatusCode != 400 || !c.closed(t) {
		t.Fatalf("a header section over the limit: %d", resp.StatusCode)
	}
	if got := testutil.ToFloat64(h.p.m.refused.WithLabelValues("header_too_large")); got != 1 {
		t.Fatalf("header_too_large %v", got)
	}
	if served.Load() != 1 {
		t.Fatalf("served %d", served.Load())
	}
}

// TestSlowClientTimesOut: a client trickling its header section (a byte
// every 20 ms) is answered 408 and closed once HeaderTimeout passed; one
// stalling its body too; an idle kept-alive connection is closed.
func TestSlowClientTimesOut(t *testing.T) {
	var served atomic.Int64
	h := newHarness(t, Config{HeaderTimeout: 300 * time.Millisecond, ReadTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}, nil, echo(&served))

	c := h.dialRaw()
	start := time.Now()
	c.send(t, "GET / HTTP/1.1\r\nHost: a\r\n")
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the trickle; ends with the test or when the proxy closes
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := c.Write([]byte("X")); err != nil {
					return
				}
			}
		}
	}()
	// A timeout reset by every byte would never answer: the connection's
	// deadline would end the read instead.
	resp, _ := c.response(t, "GET")
	if resp.StatusCode != 408 {
		t.Fatalf("slowloris: %d after %v, want 408 (header timeout 300ms)", resp.StatusCode, time.Since(start))
	}

	b := h.dialRaw()
	b.send(t, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
	if resp, _ := b.response(t, "POST"); resp.StatusCode != 408 || !b.closed(t) {
		t.Fatalf("stalled body: %d, want 408 and closed", resp.StatusCode)
	}

	i := h.dialRaw()
	i.send(t, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	i.response(t, "GET")
	if !i.closed(t) {
		t.Fatal("an idle connection stays open after IdleTimeout")
	}
	for _, r := range []string{"header_timeout", "body_timeout"} {
		if got := testutil.ToFloat64(h.p.m.refused.WithLabelValues(r)); got != 1 {
			t.Fatalf("refused{reason=%s} = %v, want 1", r, got)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, c := range []Config{{MaxHeaderBytes: 10}, {MaxDrainBytes: -1}, {IdleTimeout: -time.Second}, {ReadTimeout: time.Microsecond}} {
		if _, err := New(c); err == nil {
			t.Fatalf("%+v accepted", c)
		}
	}
}
