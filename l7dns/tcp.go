package l7dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// ServeTCP serves the queries of one client connection (RFC 7766 framing,
// answered in order) until the client closes it, it has been idle for
// TCPIdleTimeout, a query is malformed, or ctx is done; it closes conn.
// Allowed queries go to meta.Destination over one connection of its own,
// opened at the first one. It returns nil at the end of an orderly
// connection, else what ended it.
func (p *Proxy) ServeTCP(ctx context.Context, meta Meta, conn net.Conn) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	up := &tcpUpstream{p: p, meta: meta}
	defer up.close()
	for {
		if err := conn.SetReadDeadline(time.Now().Add(p.cfg.TCPIdleTimeout)); err != nil {
			return fmt.Errorf("serving DNS over TCP for %s: %w", meta.Source, err)
		}
		raw, err := readFrame(conn, p.cfg.MaxQuerySize)
		if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) || ctx.Err() != nil {
			return nil
		}
		var pe *ParseError
		if errors.As(err, &pe) {
			p.refused(meta, tcp, "query", err)
			return fmt.Errorf("query from %s: %w", meta.Source, err)
		}
		if err != nil {
			return fmt.Errorf("reading a query from %s: %w", meta.Source, err)
		}
		start := time.Now()
		q, err := p.parseQuery(meta, raw, tcp)
		if err != nil {
			return err
		}
		if !p.allowClient(meta.Source.Addr()) {
			return fmt.Errorf("query from %s: %w", meta.Source, ErrOverloaded)
		}
		ans := p.handle(ctx, meta, tcp, q, raw, start, up.exchange)
		if err := conn.SetWriteDeadline(time.Now().Add(p.cfg.QueryTimeout)); err != nil {
			return fmt.Errorf("answering %s: %w", meta.Source, err)
		}
		if err := writeFrame(conn, ans); err != nil {
			return fmt.Errorf("answering %s: %w", meta.Source, err)
		}
	}
}

// readFrame reads one length-prefixed message of at most max bytes.
func readFrame(r io.Reader, max int) ([]byte, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := int(binary.BigEndian.Uint16(n[:]))
	if size > max {
		return nil, malformed(ReasonTooLarge, "a %d-byte message, at most %d are accepted", size, max)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b, nil
}

func writeFrame(w io.Writer, b []byte) error {
	out := make([]byte, 2+len(b))
	binary.BigEndian.PutUint16(out, uint16(len(b)))
	copy(out[2:], b)
	_, err := w.Write(out)
	return err
}

// tcpUpstream is a client connection's connection to its server, opened
// at the first allowed query and closed after any failure (the next query
// opens another).
type tcpUpstream struct {
	p    *Proxy
	meta Meta
	conn net.Conn
}

func (u *tcpUpstream) exchange(ctx context.Context, q *dns.Msg, raw []byte) ([]byte, *dns.Msg, error) {
	reused := u.conn != nil
	ans, a, err := u.try(ctx, q, raw)
	if err != nil {
		u.close()
		// A server may close a connection between queries at any time
		// (RFC 7766 6.2.3): a reused one that ended before an answer is
		// retried once on a new one.
		if reused && ctx.Err() == nil && closedByServer(err) {
			if ans, a, err = u.try(ctx, q, raw); err != nil {
				u.close()
			}
		}
	}
	return ans, a, err
}

func closedByServer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (u *tcpUpstream) try(ctx context.Context, q *dns.Msg, raw []byte) ([]byte, *dns.Msg, error) {
	if u.conn == nil {
		c, err := u.p.dial(ctx, "tcp", u.meta)
		if err != nil {
			return nil, nil, err
		}
		u.conn = c
	}
	c := u.conn
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := writeFrame(c, raw); err != nil {
		return nil, nil, fmt.Errorf("sending query to %s: %w", u.meta.Destination, err)
	}
	b, err := readFrame(c, u.p.cfg.MaxResponseSize)
	if err == nil {
		var a *dns.Msg
		if a, err = parseResponse(b, u.p.cfg.MaxResponseSize); err == nil {
			if err = matches(q, a); err == nil {
				return b, a, nil
			}
			u.p.m.upstream.WithLabelValues("mismatch").Inc()
			return nil, nil, err
		}
	}
	var pe *ParseError
	if errors.As(err, &pe) {
		u.p.refused(u.meta, tcp, "response", err)
	}
	return nil, nil, fmt.Errorf("reading answer of %s: %w", u.meta.Destination, err)
}

func (u *tcpUpstream) close() {
	if u.conn != nil {
		_ = u.conn.Close()
		u.conn = nil
	}
}
