package l7http

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// BenchmarkProxyGET is one keep-alive GET through the proxy (a GET rule
// matched, request and response flows built), a real net/http client and
// server on loopback.
func BenchmarkProxyGET(b *testing.B) {
	h := newHarness(b, Config{}, []PortRuleHTTP{{Method: "GET", Path: "/v1/.*"}}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok"))
	}))
	h.p.cfg.OnFlow = func(*flowpb.Flow) {}
	c := h.client()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		get(b, c)
	}
}

// BenchmarkDirectGET is the same GET without the proxy.
func BenchmarkDirectGET(b *testing.B) {
	h := newHarness(b, Config{}, nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok"))
	}))
	c := directClient(b, h.srv.Listener.Addr().String())
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		get(b, c)
	}
}

// BenchmarkParseRequest is the parser on a browser-like request head.
func BenchmarkParseRequest(b *testing.B) {
	head := "GET /v1/cart?id=42 HTTP/1.1\r\nHost: checkout.shop.svc:8080\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n" +
		"Accept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.5\r\nCookie: session=" + strings.Repeat("c", 200) + "\r\n\r\n"
	r := bytes.NewReader(nil)
	br := bufio.NewReaderSize(r, bufSize)
	var scratch []byte
	b.ReportAllocs()
	b.SetBytes(int64(len(head)))
	for range b.N {
		r.Reset([]byte(head))
		br.Reset(r)
		if _, err := parseRequestHead(br, DefaultMaxHeaderBytes, &scratch); err != nil {
			b.Fatal(err)
		}
	}
}
