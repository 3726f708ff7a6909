// Package ui owns `clustermesh ui`: the live service map of the mesh in a
// browser. One HTTP server serves an embedded page (plain SVG and
// JavaScript, no build step, nothing from the network), server-sent
// snapshots of a flowmap.Map fed by a following GetFlows stream of an
// agent or of the relay, and the last flows of an edge or a node as
// `clustermesh observe` prints them. It binds to loopback unless a token or
// the mesh's mutual TLS guards it.
package ui

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/flowmap"
)

// The errors of this package.
var (
	// ErrUnguarded: the server would listen on an address other than
	// loopback with neither a token nor TLS that requires a client
	// certificate.
	ErrUnguarded = errors.New("the UI listens beyond loopback without a token or mutual TLS")
)

// Defaults of Config.
const (
	DefaultInterval = 250 * time.Millisecond
	DefaultRows     = 50
)

// Config configures a Server.
type Config struct {
	// Client is the Observer API the map follows: an agent's or the
	// relay's.
	Client observerpb.ObserverClient
	// Map is the aggregate's configuration (its window: the longest a page
	// may pick).
	Map flowmap.Config
	// Token, when set, is required of every request: the page is opened
	// once as /?token=TOKEN, which sets a cookie; scripts send
	// "Authorization: Bearer TOKEN".
	Token string
	// TLS, when set, serves HTTPS; with ClientAuth
	// tls.RequireAndVerifyClientCert (ca's mesh client config) it guards a
	// listener beyond loopback.
	TLS *tls.Config
	// Interval is how often a page is sent a new snapshot when the map
	// changed (default 250ms).
	Interval time.Duration
	// Rows is how many flows an edge's or a node's list holds (default 50).
	Rows int
	// Logger; nil: slog.Default().
	Logger *slog.Logger
}

// Server is the UI. Handler serves it; Run also follows the flows.
type Server struct {
	cfg     Config
	m       *flowmap.Map
	log     *slog.Logger
	metrics *metrics

	mu        sync.Mutex
	connected bool // guarded by mu: the flow stream is up
	lastErr   error
}

// New returns a server; Run starts it.
func New(cfg Config) *Server {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Rows <= 0 {
		cfg.Rows = DefaultRows
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{cfg: cfg, m: flowmap.New(cfg.Map), log: cfg.Logger, metrics: newMetrics()}
}

// Map is the server's aggregate.
func (s *Server) Map() *flowmap.Map { return s.m }

// Collector returns the UI's Prometheus metrics (also served on /metrics).
func (s *Server) Collector() prometheus.Collector { return s.metrics }

// Run follows the flows of cfg.Client into the map and serves the UI on
// ln until ctx is done, then waits for both. A listener beyond loopback
// needs cfg.Token or cfg.TLS requiring client certificates (else
// ErrUnguarded, before anything starts).
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	if err := s.checkGuard(ln.Addr()); err != nil {
		return err
	}
	if s.cfg.TLS != nil {
		ln = tls.NewListener(ln, s.cfg.TLS)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := &http.Server{
		Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }, // ends the event streams
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	var wg sync.WaitGroup
	wg.Go(func() { s.follow(ctx) })
	wg.Go(func() {
		<-ctx.Done()
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		srv.Shutdown(sctx) //nolint:errcheck // the streams end with ctx; a slow client is cut
	})
	s.log.Info("serving the mesh's map", "address", ln.Addr().String(), "tls", s.cfg.TLS != nil, "token", s.cfg.Token != "")
	err := srv.Serve(ln)
	cancel()
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("serving the UI on %s: %w", ln.Addr(), err)
}

// checkGuard refuses a listener beyond loopback that nothing guards.
func (s *Server) checkGuard(addr net.Addr) error {
	if s.cfg.Token != "" || (s.cfg.TLS != nil && s.cfg.TLS.ClientAuth == tls.RequireAndVerifyClientCert) {
		return nil
	}
	if tcp, ok := addr.(*net.TCPAddr); ok && tcp.IP.IsLoopback() {
		return nil
	}
	if addr.Network() == "unix" {
		return nil
	}
	return fmt.Errorf("listening on %s: %w: give a token, or TLS with the mesh CA's client certificates", addr, ErrUnguarded)
}

// setStream records the flow stream's state for the page.
func (s *Server) setStream(up bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connected, s.lastErr = up, err
}

func (s *Server) stream() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr != nil {
		return s.connected, s.lastErr.Error()
	}
	return s.connected, ""
}
