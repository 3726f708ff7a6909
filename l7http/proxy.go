package l7http

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/clustermesh/clustermesh/internal/loglimit"
)

// Proxy is the HTTP/1.1 engine shared by every connection of the agent's
// L7 proxy. Its methods are safe for concurrent use.
type Proxy struct {
	cfg Config
	m   *metrics

	logMu sync.Mutex
	lim   *loglimit.Keyed

	open, idle atomic.Int64 // connections being served, and of them waiting for a request
}

// Stats are the engine's connection counts.
type Stats struct {
	// Open connections being served; Idle of them waiting for a request
	// (holding no buffer).
	Open, Idle int64
}

// Stats returns the current connection counts.
func (p *Proxy) Stats() Stats { return Stats{Open: p.open.Load(), Idle: p.idle.Load()} }

// New validates cfg and registers the engine's metrics with its Registerer.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	p := &Proxy{cfg: cfg, lim: loglimit.New(time.Second)}
	m, err := newMetrics(cfg.Registerer, p.Stats)
	if err != nil {
		return nil, err
	}
	p.m = m
	return p, nil
}

// Serve proxies the requests of client, whose connection metadata is meta,
// to the original destination that dial connects to (first when a request
// is allowed; the connection is kept for the next ones). Requests are
// handled one at a time and in order: a pipelined request is read once the
// previous response is written. Serve returns when the client or the server
// closes, a limit ends the connection, or ctx is done; it closes client and
// its upstream connection. The error is nil for an ordinary end (the client
// closed, was idle too long, or asked to close); otherwise it says why the
// connection was ended (a refused request wraps ErrMalformed,
// ErrSmuggling, ErrHeaderTooLarge, ...).
func (p *Proxy) Serve(ctx context.Context, client net.Conn, meta Meta, dial DialFunc) error {
	c := &conn{p: p, meta: meta, dial: dial, client: client, aborting: make(chan struct{})}
	c.cin.c = client
	c.cout = timedWriter{c: client, timeout: p.cfg.WriteTimeout}
	stop := context.AfterFunc(ctx, c.abort)
	p.open.Add(1)
	defer func() {
		if !stop() { // abort is running: wait for it
			<-c.aborting
		}
		c.close()
		p.open.Add(-1)
	}()
	for {
		if err := c.awaitRequest(); err != nil {
			if isGone(err) || errors.Is(err, os.ErrDeadlineExceeded) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("waiting for a request: %w", err)
		}
		keep, err := c.exchange(ctx)
		if err != nil || !keep {
			return err
		}
	}
}

// conn is one proxied client connection and its upstream connection.
type conn struct {
	p    *Proxy
	meta Meta
	dial DialFunc

	client net.Conn
	cin    timedReader
	cout   timedWriter
	br     *bufio.Reader // while an exchange is under way
	bw     *bufio.Writer

	mu       sync.Mutex // up and aborted, against abort
	up       net.Conn
	aborted  bool
	aborting chan struct{} // closed when abort returns
	uin      timedReader
	uout     timedWriter
	ubr      *bufio.Reader
	ubw      *bufio.Writer

	start   time.Time // first byte of the current request
	scratch []byte
}

// hotWait is how long a connection keeps its buffers waiting for the next
// request: a busy keep-alive client reads each request in one system call;
// a connection idle for longer gives its buffers back and waits for one
// byte (hotWait < IdleTimeout; the cold wait has the rest of IdleTimeout).
const hotWait = 250 * time.Millisecond

// awaitRequest waits for the first byte of the next request (or finds it
// already buffered: a pipelined request). A connection waiting for longer
// than hotWait holds no buffer.
func (c *conn) awaitRequest() error {
	waitStart := time.Now()
	c.cin.timeout = 0
	if c.br != nil && c.br.Buffered() == 0 && c.p.cfg.IdleTimeout > hotWait {
		c.client.SetReadDeadline(waitStart.Add(hotWait))
		if _, err := c.br.Peek(1); err != nil && !errors.Is(err, ErrTimeout) {
			return err
		}
	}
	if c.br != nil && c.br.Buffered() > 0 {
		c.start = time.Now()
		return nil
	}
	c.release()
	c.client.SetReadDeadline(waitStart.Add(c.p.cfg.IdleTimeout))
	c.p.idle.Add(1)
	n, err := c.client.Read(c.cin.first[:])
	c.p.idle.Add(-1)
	if n == 0 {
		if err == nil {
			err = io.ErrNoProgress
		}
		return err
	}
	c.start = time.Now()
	c.cin.hasFirst = true
	c.br = getReader(&c.cin)
	return nil
}

// release returns the buffers of an idle connection to their pools.
func (c *conn) release() {
	if c.br != nil {
		putReader(c.br)
		c.br = nil
	}
	if c.bw != nil {
		putWriter(c.bw)
		c.bw = nil
	}
	if c.ubr != nil {
		if c.ubr.Buffered() > 0 { // bytes the server sent unasked: not reusable
			c.dropUpstream()
		} else {
			putReader(c.ubr)
			c.ubr = nil
		}
	}
	if c.ubw != nil {
		putWriter(c.ubw)
		c.ubw = nil
	}
}

func (c *conn) writer() *bufio.Writer {
	if c.bw == nil {
		c.bw = getWriter(&c.cout)
	}
	return c.bw
}

// upstream connects to the original destination unless connected, and
// readies its buffers.
func (c *conn) upstream(ctx context.Context) error {
	if c.up == nil {
		dctx, cancel := context.WithTimeout(ctx, c.p.cfg.DialTimeout)
		up, err := c.dial(dctx)
		cancel()
		if err != nil {
			return fmt.Errorf("connecting to %s: %w", c.meta.Destination, err)
		}
		c.mu.Lock()
		if c.aborted {
			c.mu.Unlock()
			up.Close()
			return fmt.Errorf("connecting to %s: %w", c.meta.Destination, context.Canceled)
		}
		c.up = up
		c.mu.Unlock()
		c.uin = timedReader{c: up}
		c.uout = timedWriter{c: up, timeout: c.p.cfg.WriteTimeout}
	}
	if c.ubr == nil {
		c.ubr = getReader(&c.uin)
	}
	if c.ubw == nil {
		c.ubw = getWriter(&c.uout)
	}
	return nil
}

// dropUpstream closes the upstream connection (the next allowed request
// dials again).
func (c *conn) dropUpstream() {
	c.mu.Lock()
	up := c.up
	c.up = nil
	c.mu.Unlock()
	if up != nil {
		up.Close()
	}
	if c.ubr != nil {
		putReader(c.ubr)
		c.ubr = nil
	}
	if c.ubw != nil {
		putWriter(c.ubw)
		c.ubw = nil
	}
}

// abort ends the connection from another goroutine (ctx done).
func (c *conn) abort() {
	defer close(c.aborting)
	c.mu.Lock()
	c.aborted = true
	up := c.up
	c.mu.Unlock()
	c.client.Close()
	if up != nil {
		up.Close()
	}
}

func (c *conn) close() {
	c.client.Close()
	c.dropUpstream()
	c.release()
}

// emit hands f to the flow callback.
func (c *conn) emit(f *flowpb.Flow) {
	if c.p.cfg.OnFlow != nil {
		c.p.cfg.OnFlow(f)
	}
}

// logLimited logs one line per reason per second.
func (c *conn) logLimited(msg, reason string, err error) {
	p := c.p
	p.logMu.Lock()
	ok, suppressed := p.lim.Allow(reason, time.Now())
	p.logMu.Unlock()
	if !ok {
		return
	}
	p.cfg.Logger.Warn(msg, slog.String("reason", reason), slog.Any("error", err),
		slog.String("source", c.meta.Source.String()), slog.String("destination", c.meta.Destination.String()),
		slog.Uint64("suppressed", suppressed))
}
