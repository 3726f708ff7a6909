package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/flowexport"
	"github.com/clustermesh/clustermesh/flowmetrics"
	"github.com/clustermesh/clustermesh/internal/unixsock"
	"github.com/clustermesh/clustermesh/observe"
)

// HubbleConfig is the node's flow observability: Hubble's Observer API on
// the flows of every endpoint of the node (package observe).
type HubbleConfig struct {
	// Enable observes every endpoint of NodeName: the policy programs are
	// attached to each (they enforce nothing where no policy selects the
	// endpoint) and report its flows (--enable-hubble, true in NewConfig).
	// Only on the eBPF datapath, with --node-name.
	Enable bool
	// SocketPath is the unix socket of the Observer API
	// (--hubble-socket-path); empty: not served there.
	SocketPath string
	// ListenAddress is the host:port of the Observer API for relays and
	// remote `hubble` CLIs (--hubble-listen-address), with mutual TLS:
	// TLSCertFile and TLSKeyFile are the node's server certificate, and
	// clients must present a certificate of TLSClientCAFile (the mesh CA).
	// Empty: not served.
	ListenAddress                            string
	TLSCertFile, TLSKeyFile, TLSClientCAFile string
	// EventBufferCapacity is how many flows the agent keeps for requests
	// of past flows (--hubble-event-buffer-capacity).
	EventBufferCapacity int
	// Metrics are the flow metrics to count, in Hubble's syntax
	// (--hubble-metrics, package flowmetrics): "drop:sourceContext=pod",
	// "flow", ...; none by default.
	Metrics []string
	// FlowLogsConfig is the flow export's configuration file
	// (--hubble-flowlogs-config-path, package flowexport), re-read when it
	// changes; empty: no export.
	FlowLogsConfig string
}

// DefaultHubbleSocketPath is the default of HubbleConfig.SocketPath (a
// relay finds the TCP address in the node's entry, wire.HubbleAddress).
const DefaultHubbleSocketPath = "/var/run/clustermesh/hubble.sock"

func (h *HubbleConfig) registerFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&h.Enable, "enable-hubble", h.Enable, "observe the flows of every endpoint of --node-name and serve them with Hubble's Observer API (the real hubble CLI and relays read it); the policy programs are attached to every endpoint, and enforce nothing where no policy selects it")
	fs.StringVar(&h.SocketPath, "hubble-socket-path", h.SocketPath, "unix socket of the Observer API (hubble observe --server unix://PATH); \"\" disables")
	fs.StringVar(&h.ListenAddress, "hubble-listen-address", h.ListenAddress, "host:port of the Observer API for relays and remote hubble CLIs, with mutual TLS (needs --hubble-tls-cert-file, --hubble-tls-key-file, --hubble-tls-client-ca-files); \"\" disables")
	fs.StringVar(&h.TLSCertFile, "hubble-tls-cert-file", h.TLSCertFile, "the node's Observer server certificate, of the mesh CA (clustermesh ca issue --observer-server CLUSTER)")
	fs.StringVar(&h.TLSKeyFile, "hubble-tls-key-file", h.TLSKeyFile, "the key of --hubble-tls-cert-file")
	fs.StringVar(&h.TLSClientCAFile, "hubble-tls-client-ca-files", h.TLSClientCAFile, "the mesh CA: clients of --hubble-listen-address must present a certificate it signed")
	fs.StringArrayVar(&h.Metrics, "hubble-metrics", h.Metrics, "flow metrics to count on --metrics-addr, as Hubble names them, space-separated or repeated: flow, drop, tcp, port-distribution, icmp, http (or httpV2; exemplars=true), dns (query, ignoreAAAA), each with options (\"drop:sourceContext=namespace|pod;destinationContext=pod;labelsContext=source_namespace,destination_namespace\"); see docs/observe.md")
	fs.StringVar(&h.FlowLogsConfig, "hubble-flowlogs-config-path", h.FlowLogsConfig, "export flows to JSON-lines files as this file says (flowLogs: entries with filters, field masks and rotation), re-read when it changes; see docs/observe.md")
	fs.IntVar(&h.EventBufferCapacity, "hubble-event-buffer-capacity", h.EventBufferCapacity, "flows kept for requests of past flows (hubble observe --last N); the oldest is overwritten")
}

// validate checks the Observer's listeners.
func (h *HubbleConfig) validate() error {
	if !h.Enable {
		return nil
	}
	if h.EventBufferCapacity < 1 {
		return fmt.Errorf("--hubble-event-buffer-capacity %d: want at least 1", h.EventBufferCapacity)
	}
	if _, err := flowmetrics.Parse(h.metricSpecs()); err != nil {
		return fmt.Errorf("--hubble-metrics: %w", err)
	}
	if h.ListenAddress != "" && (h.TLSCertFile == "" || h.TLSKeyFile == "" || h.TLSClientCAFile == "") {
		return errors.New("--hubble-listen-address serves flows only with mutual TLS: set --hubble-tls-cert-file, --hubble-tls-key-file and --hubble-tls-client-ca-files (the mesh CA)")
	}
	return nil
}

// metricSpecs are the metrics' specs, each flag value split on white space.
func (h *HubbleConfig) metricSpecs() []string {
	var out []string
	for _, v := range h.Metrics {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

// buildFlowOutputs makes the hub's flow metrics and the flow export.
func (n *Node) buildFlowOutputs() error {
	h := &n.cfg.Hubble
	mc, err := flowmetrics.Parse(h.metricSpecs())
	if err != nil {
		return fmt.Errorf("--hubble-metrics: %w", err)
	}
	n.flowMetrics = &collectorList{}
	if n.metrics, err = flowmetrics.New(mc, n.flowMetrics); err != nil {
		return fmt.Errorf("creating the flow metrics: %w", err)
	}
	if h.FlowLogsConfig == "" {
		return nil
	}
	n.export, err = flowexport.New(flowexport.Config{Path: h.FlowLogsConfig, NodeName: n.cfg.hubbleNodeName(),
		Logger: n.log, Registerer: n.flowMetrics})
	if err != nil {
		return fmt.Errorf("configuring the flow export: %w", err)
	}
	return nil
}

// collectorList is a prometheus.Registerer that keeps what is registered,
// for the agent's metrics server.
type collectorList struct{ cs []prometheus.Collector }

func (l *collectorList) Register(c prometheus.Collector) error { l.cs = append(l.cs, c); return nil }

func (l *collectorList) MustRegister(cs ...prometheus.Collector) { l.cs = append(l.cs, cs...) }

func (l *collectorList) Unregister(prometheus.Collector) bool { return false }

// observing: the node reads and serves flows (the eBPF datapath, a node
// name whose endpoints to observe, Hubble on).
func (c *Config) observing() bool { return c.Hubble.Enable && c.NodeName != "" }

// hubbleNodeName is the node's name in flows, "cluster/node" as Hubble
// names nodes in a mesh.
func (c *Config) hubbleNodeName() string { return c.Sync.ClusterName + "/" + c.NodeName }

// serveObserver serves the Observer API, and the Peer service (every node
// of the mesh with its Observer's address), on the unix socket and the
// TCP address until ctx is done.
func (n *Node) serveObserver(ctx context.Context) error {
	h := &n.cfg.Hubble
	srv := observe.NewServer(n.hub, h.ListenAddress)
	var servers []*grpc.Server
	var listeners []net.Listener
	if h.SocketPath != "" {
		l, err := unixsock.Listen(h.SocketPath, 0o660) // root and the socket's group
		if err != nil {
			return fmt.Errorf("serving the Observer API: %w", err)
		}
		g := grpc.NewServer()
		n.registerHubble(g, srv)
		servers, listeners = append(servers, g), append(listeners, l)
	}
	if h.ListenAddress != "" {
		tc, err := ca.ServerTLSConfig(h.TLSCertFile, h.TLSKeyFile, h.TLSClientCAFile)
		if err != nil {
			closeAll(listeners)
			return fmt.Errorf("loading the Observer's TLS certificate: %w", err)
		}
		l, err := net.Listen("tcp", h.ListenAddress)
		if err != nil {
			closeAll(listeners)
			return fmt.Errorf("listening on %s for the Observer API: %w", h.ListenAddress, err)
		}
		g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tc)))
		n.registerHubble(g, srv)
		servers, listeners = append(servers, g), append(listeners, l)
	}
	n.log.Info("serving Hubble's Observer API", "socket", h.SocketPath, "address", h.ListenAddress)
	return serveGRPC(ctx, servers, listeners)
}

// HealthService is the service the hubble CLI's health check asks about
// (hubble status): SERVING while the agent serves flows.
const HealthService = "hubble.server.Observer"

// registerHubble registers the Observer API, the Peer service and the
// health service on g.
func (n *Node) registerHubble(g *grpc.Server, srv *observe.Server) {
	srv.Register(g)
	n.peers.srv.Register(g)
	hs := health.NewServer()
	hs.SetServingStatus(HealthService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
}

// serveGRPC serves each server on its listener until ctx is done or one
// fails; then it stops them all (ending their streams) and waits.
func serveGRPC(ctx context.Context, servers []*grpc.Server, listeners []net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(servers))
	var wg sync.WaitGroup
	for i, g := range servers {
		wg.Go(func() {
			if err := g.Serve(listeners[i]); err != nil {
				errs <- fmt.Errorf("serving the Observer API on %s: %w", listeners[i].Addr(), err)
				cancel()
			}
		})
	}
	<-ctx.Done()
	for _, g := range servers {
		g.Stop()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func closeAll(ls []net.Listener) {
	for _, l := range ls {
		l.Close()
	}
}
