package l7http

import (
	"net/http"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestBadUpstreamResponses: a server's smuggling-shaped response is a 502
// with an ERROR response flow; a response cut short is cut short for the
// client too (closed), each counted by reason.
func TestBadUpstreamResponses(t *testing.T) {
	h := newHarness(t, Config{}, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, bw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		switch r.URL.Path {
		case "/smuggle":
			bw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
		case "/short":
			bw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
		}
		bw.Flush()
	}))
	c := h.dialRaw()
	c.send(t, "GET /smuggle HTTP/1.1\r\nHost: a\r\n\r\n")
	if resp, _ := c.response(t, "GET"); resp.StatusCode != 502 || !c.closed(t) {
		t.Fatalf("smuggling response: %d, want 502 and closed", resp.StatusCode)
	}
	fs := h.waitFlows(2)
	if fs[1].GetVerdict() != flowpb.Verdict_ERROR || fs[1].GetL7().GetHttp().GetCode() != 502 {
		t.Fatalf("response flow %v", fs[1])
	}
	c = h.dialRaw()
	c.send(t, "GET /short HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("short response: %v", err)
	}
	buf := make([]byte, 200)
	n, _ := resp.Body.Read(buf)
	for err == nil {
		var k int
		k, err = resp.Body.Read(buf[n:])
		n += k
	}
	if string(buf[:n]) != "only this" || err.Error() != "unexpected EOF" {
		t.Fatalf("short body %q, %v; want what came, then unexpected EOF", buf[:n], err)
	}
	for _, r := range []string{"upstream_malformed", "upstream_reset"} {
		if got := testutil.ToFloat64(h.p.m.upstream.WithLabelValues(r)); got != 1 {
			t.Fatalf("upstream_errors{reason=%s} = %v", r, got)
		}
	}
}
