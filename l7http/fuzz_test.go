package l7http

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"testing"
)

// forwardAll is the engine's request path without sockets: requests parsed
// from in, each serialized (head and body) as the proxy forwards it, until
// in ends or a request is refused. complete is how much of out holds whole
// requests (a body refused midway leaves its valid part after it, as the
// proxy streams it).
func forwardAll(in []byte) (out []byte, complete int, reqs []*requestHead, err error) {
	br := bufio.NewReaderSize(bytes.NewReader(in), bufSize)
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	var scratch []byte
	defer func() { bw.Flush(); out = buf.Bytes() }()
	for {
		if _, err := br.Peek(1); err != nil {
			return nil, complete, reqs, nil
		}
		req, err := parseRequestHead(br, 4096, &scratch)
		if err != nil {
			return nil, complete, reqs, err
		}
		writeRequestHead(bw, req)
		switch {
		case req.chunked:
			err = copyChunked(bw, br, 4096, &scratch)
		case req.contentLength > 0:
			err = copyN(bw, br, req.contentLength)
		}
		if err != nil {
			return nil, complete, reqs, err
		}
		bw.Flush()
		complete, reqs = buf.Len(), append(reqs, req)
	}
}

// FuzzRequest: parsing never panics, and what the proxy forwards is read
// the same way by the proxy again (byte for byte) and by Go's own server
// parser (same requests, same targets, same bodies): a refused request or
// the invalid part of a body is never in it.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /y HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x4\r\nabcd\r\n0\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, complete, reqs, _ := forwardAll(in)
		whole := out[:complete]
		again, complete2, reqs2, err := forwardAll(whole)
		if err != nil || complete2 != len(whole) || !bytes.Equal(again, whole) || len(reqs2) != len(reqs) {
			t.Fatalf("forwarded bytes read differently by the proxy: %v\n%q\n%q", err, whole, again)
		}
		br := bufio.NewReader(bytes.NewReader(whole))
		for i, want := range reqs {
			got, err := http.ReadRequest(br)
			if err != nil {
				t.Fatalf("Go cannot read forwarded request %d: %v\n%q", i, err, whole)
			}
			body, err := io.ReadAll(got.Body)
			if err != nil || got.Method != want.method || got.RequestURI != want.target || (want.chunked && got.ContentLength != -1) || (!want.chunked && got.ContentLength != want.contentLength) {
				t.Fatalf("request %d read by Go as %s %s (length %d, body %d bytes, %v), by the proxy as %s %s (length %d, chunked %v)\n%q",
					i, got.Method, got.RequestURI, got.ContentLength, len(body), err, want.method, want.target, want.contentLength, want.chunked, whole)
			}
		}
		if rest, _ := io.ReadAll(br); len(rest) != 0 {
			t.Fatalf("Go sees %d bytes after the forwarded requests: %q", len(rest), rest)
		}
	})
}

// FuzzChunked: chunked decoding never panics; a body it accepts is
// re-encoded canonically (decoding that again gives it back) and Go's
// chunked reader reads the same data from it.
func FuzzChunked(f *testing.F) {
	for _, s := range []string{
		"0\r\n\r\n", "3\r\nabc\r\n0\r\n\r\n", "3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n",
		"0x3\r\nabc\r\n0\r\n\r\n", "3\r\nabcd\r\n", "ffffffffffffffff\r\n", "3 \r\nabc\r\n0\r\n\r\n", "3\nabc\n0\n\n",
		"1\r\na\r\n0\r\nContent-Length: 5\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := decodeChunked(in)
		if err != nil {
			var r *refusal
			if !errors.As(err, &r) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
				t.Fatalf("error neither a refusal nor a truncation: %v", err)
			}
			return
		}
		again, err := decodeChunked(out)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("re-encoded body read differently: %v\n%q\n%q", err, out, again)
		}
		if _, err := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(out))); err != nil {
			t.Fatalf("Go cannot read the re-encoded body %q: %v", out, err)
		}
	})
}

func decodeChunked(in []byte) ([]byte, error) {
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	var scratch []byte
	err := copyChunked(bw, bufio.NewReaderSize(bytes.NewReader(in), bufSize), 4096, &scratch)
	bw.Flush()
	return buf.Bytes(), err
}
