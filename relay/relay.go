// Package relay owns the mesh's one Observer endpoint, as Hubble's relay is a
// cluster's: it learns every agent of the mesh from one or more peer services
// (peerservice), keeps a connection to each with mutual TLS from the mesh CA
// and reconnects with backoff, and answers Hubble's Observer API by asking
// them all: GetFlows merged in time order with node status events (a peer
// that is down is reported, never waited for), ServerStatus summed,
// GetNodes and GetNamespaces over the whole mesh.
package relay

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/unixsock"
	"github.com/clustermesh/clustermesh/peerservice"
)

// Sentinel errors.
var (
	// ErrInvalidConfig: a Config that cannot run (see Config.Validate).
	ErrInvalidConfig = errors.New("invalid relay config")
	// ErrPlaintextNotLocal: serving without TLS on an address that is not
	// loopback.
	ErrPlaintextNotLocal = errors.New("plaintext Observer API on a non-loopback address")
)

// HealthService is the service name of the health check the hubble CLI
// asks (`hubble status`): SERVING while at least one peer is connected.
const HealthService = "hubble.server.Observer"

// Relay serves the mesh's Observer API until its context ends.
type Relay struct {
	cfg     Config
	server  *Server
	tls     struct{ client, server *tls.Config }
	serving chan struct{}
	mu      sync.Mutex
	addr    net.Addr
}

// New checks cfg and loads its certificates.
func New(cfg Config) (*Relay, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Relay{cfg: cfg, serving: make(chan struct{})}
	if cfg.ClientCertFile != "" {
		c, err := ca.ClientTLSConfig(cfg.ClientCertFile, cfg.ClientKeyFile, cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("loading the relay's client certificate: %w", err)
		}
		r.tls.client = c
	}
	if cfg.ServerCertFile != "" {
		c, err := ca.ServerTLSConfig(cfg.ServerCertFile, cfg.ServerKeyFile, cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("loading the relay's server certificate: %w", err)
		}
		r.tls.server = c
	}
	r.server = &Server{cfg: cfg, log: cfg.Log, started: time.Now(), metrics: &metrics{},
		pool: newPool(cfg.Log, r.tls.client, cfg.DialTimeout, cfg.MaxBackoff, cfg.GoneRetention)}
	return r, nil
}

// Serving is closed once the relay listens.
func (r *Relay) Serving() <-chan struct{} { return r.serving }

// Addr is the TCP address the relay listens on (nil before Serving, or
// without ListenAddress).
func (r *Relay) Addr() net.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addr
}

// Run listens, follows the peer services and serves until ctx is done; it
// returns once everything it started has stopped. A Relay runs once.
func (r *Relay) Run(ctx context.Context) error {
	lns, err := r.listen()
	if err != nil {
		return err
	}
	defer r.server.pool.close()
	watchers, err := r.watchers()
	if err != nil {
		for _, ln := range lns {
			ln.Close()
		}
		return err
	}
	defer func() {
		for _, w := range watchers {
			w.Conn.(*grpc.ClientConn).Close()
		}
	}()
	g, hs := r.grpcServer()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := g.Serve(ln); err != nil {
				errc <- fmt.Errorf("serving the Observer API on %s: %w", ln.Addr(), err)
				cancel()
			}
		}()
	}
	for _, w := range watchers {
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(ctx) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); r.reportHealth(ctx, hs) }()
	close(r.serving)
	r.cfg.Log.Info("relay serving", "listen_address", r.Addr(), "unix_socket", r.cfg.UnixSocket, "peer_services", r.cfg.PeerServices)
	<-ctx.Done()
	g.Stop()
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// listen opens the TCP address and the unix socket the config names.
func (r *Relay) listen() ([]net.Listener, error) {
	var lns []net.Listener
	if r.cfg.ListenAddress != "" {
		ln, err := net.Listen("tcp", r.cfg.ListenAddress)
		if err != nil {
			return nil, fmt.Errorf("listening on %s: %w", r.cfg.ListenAddress, err)
		}
		if r.tls.server == nil && !isLoopback(ln.Addr()) {
			ln.Close()
			return nil, fmt.Errorf("listening on %s: %w: give the relay a server certificate (--tls-server-cert-file) or listen on 127.0.0.1", r.cfg.ListenAddress, ErrPlaintextNotLocal)
		}
		r.mu.Lock()
		r.addr = ln.Addr()
		r.mu.Unlock()
		lns = append(lns, ln)
	}
	if r.cfg.UnixSocket != "" {
		ln, err := unixsock.Listen(r.cfg.UnixSocket, 0o600)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func isLoopback(a net.Addr) bool {
	t, ok := a.(*net.TCPAddr)
	return ok && t.IP.IsLoopback()
}

// grpcServer is the server of both listeners. The unix socket is reached
// without TLS: the certificate is asked only of TCP clients.
func (r *Relay) grpcServer() (*grpc.Server, *health.Server) {
	creds := insecure.NewCredentials()
	if r.tls.server != nil {
		creds = localOrTLS{TransportCredentials: credentials.NewTLS(r.tls.server)}
	}
	g := grpc.NewServer(grpc.Creds(creds), grpc.ForceServerCodecV2(codec{}))
	observerpb.RegisterObserverServer(g, r.server)
	hs := health.NewServer()
	hs.SetServingStatus(HealthService, healthpb.HealthCheckResponse_NOT_SERVING)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	return g, hs
}

// localOrTLS is TLS on TCP connections and nothing on unix sockets, whose
// file mode guards them.
type localOrTLS struct {
	credentials.TransportCredentials
}

func (c localOrTLS) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if _, ok := conn.LocalAddr().(*net.UnixAddr); ok {
		return insecure.NewCredentials().ServerHandshake(conn)
	}
	return c.TransportCredentials.ServerHandshake(conn)
}

func (c localOrTLS) Clone() credentials.TransportCredentials {
	return localOrTLS{c.TransportCredentials.Clone()}
}

// watchers follow each peer service; each tells the pool its set.
func (r *Relay) watchers() ([]*peerservice.Watcher, error) {
	var out []*peerservice.Watcher
	for i, target := range r.cfg.PeerServices {
		conn, err := r.dialPeerService(target)
		if err != nil {
			for _, w := range out {
				w.Conn.(*grpc.ClientConn).Close()
			}
			return nil, err
		}
		out = append(out, &peerservice.Watcher{
			Conn: conn, Target: target, Log: r.cfg.Log, ResyncGrace: r.cfg.ResyncGrace, MaxBackoff: r.cfg.MaxBackoff,
			OnChange: func(p []peerservice.Peer) { r.server.pool.setSource(i, p) },
		})
	}
	return out, nil
}

// dialPeerService reaches a peer service: unix:///path in the clear, a
// TCP host:port with the client certificate.
func (r *Relay) dialPeerService(target string) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if !strings.HasPrefix(target, "unix:") {
		if r.tls.client == nil {
			return nil, fmt.Errorf("peer service %s: %w: a TCP peer service needs the client certificate (--tls-client-cert-file)", target, ErrInvalidConfig)
		}
		cfg := r.tls.client.Clone()
		host, _, _ := net.SplitHostPort(target)
		cfg.ServerName = cmp.Or(r.cfg.PeerServiceServerName, host)
		creds = credentials.NewTLS(cfg)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("dialing peer service %s: %w", target, err)
	}
	return conn, nil
}

// reportHealth keeps the health status: SERVING while a peer is connected.
func (r *Relay) reportHealth(ctx context.Context, hs *health.Server) {
	for {
		changed := r.server.pool.changes()
		st := healthpb.HealthCheckResponse_NOT_SERVING
		for _, p := range r.server.pool.list(false) {
			if p.state == connectivity.Ready {
				st = healthpb.HealthCheckResponse_SERVING
				break
			}
		}
		hs.SetServingStatus(HealthService, st)
		hs.SetServingStatus("", st)
		select {
		case <-ctx.Done():
			hs.Shutdown()
			return
		case <-changed:
		}
	}
}

var (
	descPeers = prometheus.NewDesc("clustermesh_relay_peers",
		"Peers of the relay by state: connected, unavailable, gone.", []string{"state"}, nil)
	descRequests = prometheus.NewDesc("clustermesh_relay_flow_requests_total",
		"GetFlows calls the relay served.", nil, nil)
	descFlows = prometheus.NewDesc("clustermesh_relay_flows_sent_total",
		"Responses (flows, lost and node status events) the relay sent to clients.", nil, nil)
)

// Collector returns the relay's Prometheus metrics, read at scrape time.
func (r *Relay) Collector() prometheus.Collector { return collector{r} }

type collector struct{ r *Relay }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descPeers
	ch <- descRequests
	ch <- descFlows
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{"connected": 0, "unavailable": 0, "gone": 0}
	for _, ps := range c.r.server.pool.list(true) {
		switch {
		case ps.gone:
			counts["gone"]++
		case ps.unavailable():
			counts["unavailable"]++
		default:
			counts["connected"]++
		}
	}
	for state, n := range counts {
		ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(c.r.server.metrics.requests.Load()))
	ch <- prometheus.MustNewConstMetric(descFlows, prometheus.CounterValue, float64(c.r.server.metrics.flows.Load()))
}
