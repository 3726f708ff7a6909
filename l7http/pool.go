package l7http

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// bufSize is the size of every pooled reader and writer. A connection holds
// its buffers only while an exchange is under way: an idle connection
// returns them (see conn.release).
const bufSize = 4096

var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, bufSize) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufSize) }}
)

func getReader(r io.Reader) *bufio.Reader {
	br := readers.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	readers.Put(br)
}

func getWriter(w io.Writer) *bufio.Writer {
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

func putWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	writers.Put(bw)
}

// timedReader reads from a connection; with a timeout, every read has its
// own deadline (a stalled body ends after timeout, a slow but moving one
// goes on); without, the deadline set on the connection applies.
type timedReader struct {
	c       net.Conn
	timeout time.Duration
	// first is a byte already read from c (the first of a request, read
	// while the connection was idle without holding a buffer).
	first    [1]byte
	hasFirst bool
	// reason labels a deadline error (header_timeout, body_timeout,
	// upstream_timeout): it is returned as a refusal wrapping ErrTimeout.
	reason string
}

func (t *timedReader) Read(p []byte) (int, error) {
	if t.hasFirst && len(p) > 0 {
		p[0], t.hasFirst = t.first[0], false
		return 1, nil
	}
	if t.timeout > 0 {
		t.c.SetReadDeadline(time.Now().Add(t.timeout))
	}
	n, err := t.c.Read(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return n, refuse(ErrTimeout, t.reason, err.Error())
	}
	return n, err
}

// timedWriter writes to a connection, each write within timeout; failed
// records that a write failed (which side of a copy failed).
type timedWriter struct {
	c       net.Conn
	timeout time.Duration
	failed  bool
}

func (t *timedWriter) Write(p []byte) (int, error) {
	t.c.SetWriteDeadline(time.Now().Add(t.timeout))
	n, err := t.c.Write(p)
	if err != nil {
		t.failed = true
	}
	return n, err
}
