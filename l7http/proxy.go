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
}

// New validates cfg and registers the engine's metrics with its Registerer.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Proxy{cfg: cfg, m: m, lim: loglimit.New(time.Second)}, nil
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
	c := &conn{p: p, meta: meta, dial: dial, client: client}
	c.cin.c = client
	c.cout = timedWriter{c: client, timeout: p.cfg.WriteTimeout}
	stop := context.AfterFunc(ctx, c.abort)
	defer func() {
		stop()
		c.close()
	}()
	for {
		if err := c.awaitRequest(); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) || ctx.Err() != nil {
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

	mu      sync.Mutex // up and aborted, against abort
	up      net.Conn
	aborted bool
	uin     timedReader
	uout    timedWriter
	ubr     *bufio.Reader
	ubw     *bufio.Writer

	start   time.Time // first byte of the current request
	scratch []byte
}

// awaitRequest waits for the first byte of the next request (or finds it
// already buffered: a pipelined request). While waiting, the connection
// holds no buffer.
func (c *conn) awaitRequest() error {
	if c.br != nil && c.br.Buffered() > 0 {
		c.start = time.Now()
		return nil
	}
	c.release()
	c.cin.timeout = 0
	c.client.SetReadDeadline(time.Now().Add(c.p.cfg.IdleTimeout))
	n, err := c.client.Read(c.cin.first[:])
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
