package l7dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/miekg/dns"
	"golang.org/x/time/rate"

	"github.com/clustermesh/clustermesh/internal/loglimit"
)

// Proxy is the DNS proxy engine. Safe for concurrent use: the transparent
// proxy calls ServeUDP for each datagram and ServeTCP for each connection,
// from goroutines it owns.
type Proxy struct {
	cfg Config
	m   *metrics
	sem chan struct{} // one per query in flight
	buf sync.Pool     // UDP answer buffers of MaxResponseSize+1

	logMu  sync.Mutex
	logLim *loglimit.Keyed

	rateMu   sync.Mutex
	limiters map[netip.Addr]*rate.Limiter
}

// maxLimiters bounds the per-client rate limiters; beyond it they are
// dropped and begin again full.
const maxLimiters = 16384

// New returns a Proxy for cfg.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg, m: m, sem: make(chan struct{}, cfg.MaxConcurrent),
		logLim: loglimit.New(cfg.LogEvery), limiters: map[netip.Addr]*rate.Limiter{}}
	p.buf.New = func() any { b := make([]byte, cfg.MaxResponseSize+1); return &b }
	return p, nil
}

// exchange sends a query's raw bytes to its server and returns the
// answer's, validated against q.
type exchange func(ctx context.Context, q *dns.Msg, raw []byte) ([]byte, *dns.Msg, error)

// ServeUDP handles one query datagram from meta.Source to meta.Destination
// and hands the answer datagram (the server's, or REFUSED, or SERVFAIL) to
// reply. It returns when the query is answered or dropped: a malformed
// query (ErrMalformed) or one over the client's rate (ErrOverloaded) gets
// no answer.
func (p *Proxy) ServeUDP(ctx context.Context, meta Meta, query []byte, reply func([]byte) error) error {
	start := time.Now()
	q, err := p.parseQuery(meta, query, udp)
	if err != nil {
		return err
	}
	if !p.allowClient(meta.Source.Addr()) {
		return fmt.Errorf("query from %s: %w", meta.Source, ErrOverloaded)
	}
	ans := p.handle(ctx, meta, udp, q, query, start, func(ctx context.Context, q *dns.Msg, raw []byte) ([]byte, *dns.Msg, error) {
		return p.exchangeUDP(ctx, meta, q, raw)
	})
	if err := reply(ans); err != nil {
		return fmt.Errorf("answering %s: %w", meta.Source, err)
	}
	return nil
}

// handle decides, forwards and reports one parsed query and returns the
// answer for the client.
func (p *Proxy) handle(ctx context.Context, meta Meta, proto l4, q *dns.Msg, raw []byte, start time.Time, ex exchange) []byte {
	switch qt := q.Question[0].Qtype; {
	case !meta.Rules.Allows(q.Question[0].Name):
		return p.answerHere(meta, proto, q, "denied", flowpb.Verdict_DROPPED, dns.RcodeRefused)
	case qt == dns.TypeAXFR || qt == dns.TypeIXFR: // many messages for one query: not proxied
		return p.answerHere(meta, proto, q, "error", flowpb.Verdict_ERROR, dns.RcodeNotImplemented)
	}
	select {
	case p.sem <- struct{}{}:
	default:
		p.m.rejected.WithLabelValues("concurrency").Inc()
		return p.answerHere(meta, proto, q, "error", flowpb.Verdict_ERROR, dns.RcodeServerFailure)
	}
	defer func() { <-p.sem }()
	p.m.queries.WithLabelValues("forwarded").Inc()
	p.emit(meta, proto, false, flowpb.Verdict_FORWARDED, queryRecord(q), 0)
	return p.forward(ctx, meta, proto, q, raw, start, ex)
}

// answerHere answers q with rcode without asking its server.
func (p *Proxy) answerHere(meta Meta, proto l4, q *dns.Msg, counted string, v flowpb.Verdict, rcode int) []byte {
	p.m.queries.WithLabelValues(counted).Inc()
	p.emit(meta, proto, false, v, queryRecord(q), 0)
	return reply(q, rcode)
}

// forward asks q's server, puts the answer's addresses into the cache and
// returns the answer (SERVFAIL when none came).
func (p *Proxy) forward(ctx context.Context, meta Meta, proto l4, q *dns.Msg, raw []byte, start time.Time, ex exchange) []byte {
	p.m.inFlight.Inc()
	qctx, cancel := context.WithTimeout(ctx, p.cfg.QueryTimeout)
	ans, a, err := ex(qctx, q, raw)
	cancel()
	p.m.inFlight.Dec()
	if err != nil {
		p.m.upstream.WithLabelValues("failed").Inc()
		p.logf("upstream", "DNS server did not answer: the client gets SERVFAIL", meta, err)
		rec := queryRecord(q)
		rec.Rcode = dns.RcodeServerFailure
		p.emit(meta, proto, true, flowpb.Verdict_ERROR, rec, time.Since(start))
		return reply(q, dns.RcodeServerFailure)
	}
	p.m.upstream.WithLabelValues("relayed").Inc()
	info := readAnswer(q, a)
	if p.cfg.Cache != nil && a.Rcode == dns.RcodeSuccess {
		t := time.Now()
		info.updateCache(p.cfg.Cache)
		p.m.cacheUpdate.Observe(time.Since(t).Seconds())
	}
	p.emit(meta, proto, true, flowpb.Verdict_FORWARDED, info.record(q, a), time.Since(start))
	return ans
}

// reply is q's answer with rcode and no records.
func reply(q *dns.Msg, rcode int) []byte {
	m := new(dns.Msg)
	m.SetRcode(q, rcode)
	m.RecursionAvailable = true
	b, err := m.Pack()
	if err != nil { // a question that does not pack again: the header alone
		m.Question = nil
		b, _ = m.Pack()
	}
	return b
}

func (p *Proxy) parseQuery(meta Meta, b []byte, proto l4) (*dns.Msg, error) {
	q, err := ParseQuery(b, p.cfg.MaxQuerySize)
	if err != nil {
		p.refused(meta, proto, "query", err)
		return nil, fmt.Errorf("query from %s: %w", meta.Source, err)
	}
	return q, nil
}

// refused counts, logs (rate limited) and reports a malformed message.
func (p *Proxy) refused(meta Meta, proto l4, msg string, err error) {
	reason := ReasonInvalid
	if pe, ok := err.(*ParseError); ok {
		reason = pe.Reason
	}
	p.m.malformed.WithLabelValues(msg, reason).Inc()
	if msg == "query" {
		p.m.queries.WithLabelValues("error").Inc()
	}
	p.logf(msg+"/"+reason, "malformed DNS "+msg+" dropped", meta, err)
	p.emit(meta, proto, msg == "response", flowpb.Verdict_ERROR, &flowpb.DNS{ObservationSource: observationSource}, 0)
}

func (p *Proxy) logf(key, msg string, meta Meta, err error) {
	p.logMu.Lock()
	ok, suppressed := p.logLim.Allow(key, time.Now())
	p.logMu.Unlock()
	if ok {
		p.cfg.Logger.Warn(msg, "client", meta.Source, "server", meta.Destination, "error", err, "suppressed", suppressed)
	}
}

func (p *Proxy) allowClient(a netip.Addr) bool {
	if p.cfg.ClientQPS == 0 {
		return true
	}
	p.rateMu.Lock()
	l := p.limiters[a]
	if l == nil {
		if len(p.limiters) >= maxLimiters {
			clear(p.limiters)
		}
		l = rate.NewLimiter(rate.Limit(p.cfg.ClientQPS), p.cfg.ClientBurst)
		p.limiters[a] = l
	}
	p.rateMu.Unlock()
	if !l.Allow() {
		p.m.rejected.WithLabelValues("client_rate").Inc()
		return false
	}
	return true
}

func (p *Proxy) dial(ctx context.Context, network string, meta Meta) (net.Conn, error) {
	var c net.Conn
	var err error
	if meta.Dial != nil {
		c, err = meta.Dial(ctx)
	} else {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, meta.Destination.String())
	}
	if err != nil {
		return nil, fmt.Errorf("dialing DNS server %s over %s: %w", meta.Destination, network, err)
	}
	return c, nil
}

// exchangeUDP asks the server on a socket of its own, and waits for an
// answer that matches q (others are counted and ignored).
func (p *Proxy) exchangeUDP(ctx context.Context, meta Meta, q *dns.Msg, raw []byte) ([]byte, *dns.Msg, error) {
	conn, err := p.dial(ctx, "udp", meta)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write(raw); err != nil {
		return nil, nil, fmt.Errorf("sending query to %s: %w", meta.Destination, err)
	}
	bp := p.buf.Get().(*[]byte)
	defer p.buf.Put(bp)
	buf := *bp
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return nil, nil, fmt.Errorf("reading answer of %s: %w", meta.Destination, err)
		}
		a, err := parseResponse(buf[:n], p.cfg.MaxResponseSize)
		if err != nil {
			p.refused(meta, udp, "response", err)
			continue
		}
		if err := matches(q, a); err != nil {
			p.m.upstream.WithLabelValues("mismatch").Inc()
			p.logf("mismatch", "DNS answer ignored", meta, err)
			continue
		}
		return append([]byte(nil), buf[:n]...), a, nil
	}
}
