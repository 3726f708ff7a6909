package l7proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/internal/loglimit"
)

// Proxy is the agent's transparent proxy: the listeners of every redirect,
// the connection limit, the policy routing. All methods are safe for
// concurrent use.
type Proxy struct {
	cfg   Config
	m     *metrics
	logs  *loglimit.Keyed
	slots chan struct{} // one per connection or datagram being served

	earlyDemux string // the node's setting before New

	mu        sync.Mutex
	closed    bool                      // guarded by mu
	ports     *ports                    // guarded by mu
	redirects map[RedirectKey]*redirect // guarded by mu
}

// redirect is one redirect's listeners and what they serve.
type redirect struct {
	key     RedirectKey
	port    uint16
	handler Handler

	ctx    context.Context // done when the redirect stops
	cancel context.CancelFunc
	wg     sync.WaitGroup // the listeners' loops and the handlers

	mu        sync.Mutex
	rules     any                    // guarded by mu
	listeners []io.Closer            // guarded by mu
	conns     map[io.Closer]struct{} // guarded by mu: closed after StopGrace
	stopping  bool                   // guarded by mu
}

// New validates cfg, installs the policy routing of the redirect in the
// node's namespace (Config.InNetns) and turns the stack's early
// demultiplexing off there (see earlyDemuxSysctl). Close undoes both.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("l7 proxy: register metrics: %w", err)
	}
	p := &Proxy{cfg: cfg, m: m, logs: loglimit.New(time.Minute), slots: make(chan struct{}, cfg.MaxConnections),
		ports: newPorts(cfg.PortMin, cfg.PortMax), redirects: map[RedirectKey]*redirect{}}
	if err := p.installRouting(); err != nil {
		return nil, err
	}
	if p.earlyDemux, err = p.setEarlyDemux("0"); err != nil {
		return nil, errors.Join(err, p.removeRouting())
	}
	return p, nil
}

// Ensure makes k's redirect listen and returns its proxy port (the one it
// has already, or a new one: see ports), with rules as the Metadata.Rules
// of the connections accepted from now on. Errors: ErrUnknownParser,
// ErrNoPort, ErrClosed, or a listen error naming the port.
func (p *Proxy) Ensure(k RedirectKey, rules any) (uint16, error) {
	h, ok := p.cfg.Handlers[k.Parser]
	if !ok {
		return 0, fmt.Errorf("l7 proxy: redirect of endpoint %d port %d: parser %q: %w", k.EndpointID, k.Port, k.Parser, ErrUnknownParser)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, ErrClosed
	}
	if r, ok := p.redirects[k]; ok {
		r.mu.Lock()
		r.rules = rules
		r.mu.Unlock()
		return r.port, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &redirect{key: k, handler: h, ctx: ctx, cancel: cancel, rules: rules, conns: map[io.Closer]struct{}{}}
	var lerr error
	port := p.ports.candidates(k, func(port uint16) bool {
		err := p.listen(r, port)
		if errors.Is(err, syscall.EADDRINUSE) {
			p.m.listenFails.Inc()
			return false
		}
		lerr = err
		return true
	})
	switch {
	case port != 0 && lerr != nil:
		p.ports.release(port)
		cancel()
		return 0, lerr
	case port == 0:
		cancel()
		return 0, fmt.Errorf("l7 proxy: redirect of endpoint %d port %d: %d-%d: %w", k.EndpointID, k.Port, p.cfg.PortMin, p.cfg.PortMax, ErrNoPort)
	}
	p.redirects[k] = r
	p.m.redirects.Set(float64(len(p.redirects)))
	return port, nil
}

// Remove stops k's listeners and its connections (see Close) and frees its
// port. Absent: no-op.
func (p *Proxy) Remove(k RedirectKey) {
	p.mu.Lock()
	r, ok := p.redirects[k]
	if ok {
		delete(p.redirects, k)
		p.ports.release(r.port)
		p.m.redirects.Set(float64(len(p.redirects)))
	}
	p.mu.Unlock()
	if ok {
		r.stop(p.cfg.StopGrace)
	}
}

// Redirects lists the redirects and their proxy ports.
func (p *Proxy) Redirects() map[RedirectKey]uint16 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[RedirectKey]uint16, len(p.redirects))
	for k, r := range p.redirects {
		out[k] = r.port
	}
	return out
}

// Close stops every listener (from then on the policy programs drop the
// redirected flows: fail closed), cancels the handlers' contexts, waits
// up to StopGrace for them, then closes their connections and waits for
// them to return; then removes the policy routing. Idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	rs := p.redirects
	p.redirects = map[RedirectKey]*redirect{}
	p.m.redirects.Set(0)
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Go(func() { r.stop(p.cfg.StopGrace) })
	}
	wg.Wait()
	_, err := p.setEarlyDemux(p.earlyDemux)
	return errors.Join(err, p.removeRouting())
}

// listen opens r's listeners on port: TCP, and UDP for a DatagramHandler,
// for each family, sets r.port and starts serving them. On error nothing
// stays open.
func (p *Proxy) listen(r *redirect, port uint16) error {
	type opened struct {
		tcp *net.TCPListener
		udp *net.UDPConn
	}
	var all []opened
	closeAll := func() {
		for _, o := range all {
			if o.tcp != nil {
				o.tcp.Close()
			}
			if o.udp != nil {
				o.udp.Close()
			}
		}
	}
	_, datagrams := r.handler.(DatagramHandler)
	nets := []string{"4"}
	if !p.cfg.NoIPv6 {
		nets = append(nets, "6")
	}
	err := p.cfg.InNetns(func() error {
		for _, fam := range nets {
			addr := "0.0.0.0"
			if fam == "6" {
				addr = "[::]"
			}
			addr = fmt.Sprintf("%s:%d", addr, port)
			lc := net.ListenConfig{Control: sockopts(tcpolicy.MarkProxyReply, false)}
			ln, err := lc.Listen(context.Background(), "tcp"+fam, addr)
			if err != nil {
				return err
			}
			all = append(all, opened{tcp: ln.(*net.TCPListener)})
			if !datagrams {
				continue
			}
			lc = net.ListenConfig{Control: sockopts(tcpolicy.MarkProxyReply, true)}
			pc, err := lc.ListenPacket(context.Background(), "udp"+fam, addr)
			if err != nil {
				return err
			}
			all = append(all, opened{udp: pc.(*net.UDPConn)})
		}
		return nil
	})
	if err != nil {
		closeAll()
		if errors.Is(err, syscall.EADDRINUSE) {
			return err
		}
		return fmt.Errorf("l7 proxy: listen on port %d: %w", port, err)
	}
	r.port = port // before the loops read it
	for _, o := range all {
		if o.tcp != nil {
			r.listeners = append(r.listeners, o.tcp)
			r.wg.Go(func() { p.serveTCP(r, o.tcp) })
		} else {
			r.listeners = append(r.listeners, o.udp)
			r.wg.Go(func() { p.serveUDP(r, o.udp) })
		}
	}
	return nil
}

// stop closes r's listeners, cancels its handlers, waits for them up to
// grace, then closes their connections and waits for the rest.
func (r *redirect) stop(grace time.Duration) {
	r.mu.Lock()
	r.stopping = true
	for _, l := range r.listeners {
		l.Close()
	}
	r.mu.Unlock()
	r.cancel()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	r.mu.Lock()
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	<-done
}

// track records c to be closed by stop; false when r is stopping.
func (r *redirect) track(c io.Closer) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopping {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *redirect) untrack(c io.Closer) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

// acquire takes a slot of MaxConnections; false when none is free.
func (p *Proxy) acquire() bool {
	select {
	case p.slots <- struct{}{}:
		p.m.active.Inc()
		return true
	default:
		p.m.rejected.WithLabelValues(rejectLimit).Inc()
		return false
	}
}

func (p *Proxy) release() {
	<-p.slots
	p.m.active.Dec()
}

// metadata describes a flow of r from src to dst.
func (p *Proxy) metadata(r *redirect, src, dst netip.AddrPort, proto datapath.Protocol) Metadata {
	r.mu.Lock()
	rules := r.rules
	r.mu.Unlock()
	return Metadata{
		OrigSrc: src, OrigDst: dst,
		SrcIdentity: p.cfg.Identities.IdentityOf(src.Addr()),
		DstIdentity: p.cfg.Identities.IdentityOf(dst.Addr()),
		EndpointID:  r.key.EndpointID, Direction: r.key.Direction, Protocol: proto,
		Parser: r.key.Parser, ProxyPort: r.port, Rules: rules,
		dial: p.dialUpstream,
	}
}

// logf logs a problem of key at most once a minute (the rest counted in
// the next line).
func (p *Proxy) logf(key, msg string, args ...any) {
	if ok, suppressed := p.logs.Allow(key, time.Now()); ok {
		p.cfg.Log.Warn(msg, append(args, "suppressed", suppressed)...)
	}
}

// backoff is the wait after n failures in a row.
func (p *Proxy) backoff(n int) time.Duration {
	d := p.cfg.AcceptBackoffMin
	for i := 1; i < n && d < p.cfg.AcceptBackoffMax; i++ {
		d *= 2
	}
	return min(d, p.cfg.AcceptBackoffMax)
}

// sleep waits d or until ctx is done; false when ctx is.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
