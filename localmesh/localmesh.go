// Package localmesh runs a whole multi-cluster mesh on one machine, on
// loopback: one mesh CA, and per cluster a state file, a mesh apiserver and
// its agents, every pair of clusters connected. It is the embedded default
// behind `clustermesh demo` and the harness of the end-to-end tests. It wires
// the real pieces by hand, as the CLI does; nothing in it is a fake.
package localmesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/portlock"
	"github.com/clustermesh/clustermesh/kvstoremesh"
	"github.com/clustermesh/clustermesh/meshapiserver"
	"github.com/clustermesh/clustermesh/node"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// ClusterSpec describes one cluster of the mesh.
type ClusterSpec struct {
	Name  string
	ID    uint32
	State *statesource.State
}

// Options of a local mesh.
type Options struct {
	Dir              string // working directory (certificates, state files, configs)
	Clusters         []ClusterSpec
	AgentsPerCluster int  // default 1
	EBPF             bool // real pinned eBPF maps (needs root); else the in-memory datapath
	// Fast timings for tests and the demo: probe, backoff and poll intervals.
	ProbeInterval time.Duration // default 200ms
	Logger        *slog.Logger
	// APIServer and Agent, when set, adjust each apiserver's and agent's
	// config before it starts (tests use them for timeouts and TTLs).
	APIServer func(*meshapiserver.Config)
	Agent     func(*agentsync.Config)
	// Node, when set, is asked for each agent (by name) whether it runs the
	// whole node agent (package node: policy, flows, its status server)
	// rather than the sync agent alone; it adjusts cfg and returns true.
	// cfg comes with the sync settings of every agent (Agent is called on
	// cfg.Sync after Node), the cluster's state file as its Source, the
	// datapath the mesh chose, and no status, metrics or socket load
	// balancer.
	Node func(name string, cfg *node.Config) bool
	// ReadOwnCluster also gives each cluster's agents their own cluster's
	// apiserver config: they then read its identities and ipcache (policy
	// needs the local pods' identities).
	ReadOwnCluster bool
	// Hubble: every whole node agent serves Hubble's Observer API and Peer
	// service on a unix socket in Dir (Agent.HubbleSocket) and on a
	// loopback port with mutual TLS from the mesh CA (Agent.HubbleAddress),
	// published on its state node (wire.AnnotationHubbleAddress) so that
	// relays find it.
	Hubble bool
	// Cache runs a kvstoremesh cache per cluster (cache.go): each cluster's
	// agents read every peer from their own cluster's apiserver, where the
	// cache writes it. CacheConfig, when set, adjusts each cache's config
	// (after Agent adjusted its reading side).
	Cache       bool
	CacheConfig func(*kvstoremesh.Config)
	// CacheClusters, when set, names the clusters that run a cache (with
	// Cache); the others' agents read every peer directly. AgentClusters,
	// when set, names the clusters that run agents (the others run only
	// their apiserver): scale figures load one cluster, not all.
	CacheClusters, AgentClusters []string
}

// cached reports whether cluster name runs a cache.
func (o *Options) cached(name string) bool {
	return o.Cache && (o.CacheClusters == nil || slices.Contains(o.CacheClusters, name))
}

// runsAgents reports whether cluster name runs agents.
func (o *Options) runsAgents(name string) bool {
	return o.AgentClusters == nil || slices.Contains(o.AgentClusters, name)
}

// Mesh is a running local mesh.
type Mesh struct {
	opts     Options
	ca       *ca.CA
	Clusters []*Cluster
	ports    []*portlock.Lease // agents' Observer and metrics ports, released by Close
}

// Cluster is one cluster of a Mesh.
type Cluster struct {
	Name      string
	ID        uint32
	Bundle    ca.Bundle
	StateFile string
	ConfigDir string // the agents' directory of remote configs
	// CacheConfigDir is the cache's directory of remote configs (Options.Cache).
	CacheConfigDir string
	Agents         []*Agent

	mesh    *Mesh
	hubble  map[string]string // state node → its agent's Observer address (Options.Hubble)
	metrics map[string]string // state node → its agent's metrics address (Options.Hubble)
	addr    string            // host:port the apiserver listens on, stable across restarts
	mu      sync.Mutex
	server  *meshapiserver.Server // guarded by mu
	stopSrv context.CancelFunc    // guarded by mu
	srvDone chan error            // guarded by mu

	cache     *kvstoremesh.Cache // guarded by mu
	stopCache context.CancelFunc // guarded by mu
	cacheDone chan struct{}      // guarded by mu
}

// Agent is one node agent of a Cluster.
type Agent struct {
	Name     string
	Sync     *agentsync.Agent
	Datapath datapath.Datapath
	PinDir   string
	// Node is the whole node agent when Options.Node made it one (Sync
	// and Datapath are its parts); nil: the sync agent alone.
	Node *node.Node
	// HubbleSocket and HubbleAddress are where the node agent serves
	// Hubble's Observer API with Options.Hubble, MetricsAddress its
	// metrics with Hubble's flow metrics (HubbleMetrics); "" otherwise.
	HubbleSocket, HubbleAddress, MetricsAddress string
	cancel                                      context.CancelFunc // nil once stopped
	ended                                       chan struct{}      // closed when run has returned
	err                                         error              // run's error, valid after ended
}

// Ended returns why the agent ended while it was meant to run (a port it
// could not bind, a part that failed), nil while it runs or after
// StopAgent stopped it.
func (a *Agent) Ended() error {
	if a.cancel == nil {
		return nil
	}
	select {
	case <-a.ended:
		if a.err == nil {
			return fmt.Errorf("agent %s ended on its own", a.Name)
		}
		return fmt.Errorf("agent %s ended: %w", a.Name, a.err)
	default:
		return nil
	}
}

// stop cancels the agent and returns its run's error.
func (a *Agent) stop() error {
	a.cancel()
	<-a.ended
	a.cancel = nil
	return a.err
}

// Failure returns the first agent of the mesh that ended while it was
// meant to run (Agent.Ended); a wait on the mesh gives up on it at once.
func (m *Mesh) Failure() error {
	for _, c := range m.Clusters {
		for _, a := range c.Agents {
			if err := a.Ended(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Start builds the PKI, writes the state files, starts every apiserver and
// waits until each has published, then writes every pair's configs and
// starts the agents.
func Start(ctx context.Context, opts Options) (*Mesh, error) {
	if opts.AgentsPerCluster == 0 {
		opts.AgentsPerCluster = 1
	}
	if opts.ProbeInterval == 0 {
		opts.ProbeInterval = 200 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	mesh, err := ca.New("clustermesh local mesh CA", 30*24*time.Hour)
	if err != nil {
		return nil, err
	}
	if err := mesh.Save(filepath.Join(opts.Dir, "ca")); err != nil {
		return nil, err
	}
	m := &Mesh{opts: opts, ca: mesh}
	for _, spec := range opts.Clusters {
		c, err := m.newCluster(spec)
		if err != nil {
			m.Close()
			return nil, err
		}
		m.Clusters = append(m.Clusters, c)
		if err := c.StartAPIServer(ctx); err != nil {
			m.Close()
			return nil, err
		}
		if opts.cached(c.Name) {
			if err := c.StartCache(ctx); err != nil {
				m.Close()
				return nil, err
			}
		}
	}
	for _, c := range m.Clusters {
		for _, peer := range m.Clusters {
			if peer != c || opts.ReadOwnCluster {
				if err := m.Connect(c.Name, peer.Name); err != nil {
					m.Close()
					return nil, err
				}
			}
		}
	}
	for _, c := range m.Clusters {
		for i := 0; i < opts.AgentsPerCluster && opts.runsAgents(c.Name); i++ {
			if err := c.startAgent(ctx, fmt.Sprintf("%s-node-%d", c.Name, i+1)); err != nil {
				m.Close()
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *Mesh) newCluster(spec ClusterSpec) (*Cluster, error) {
	dir := filepath.Join(m.opts.Dir, spec.Name)
	b, err := m.ca.IssueBundle(filepath.Join(dir, "certs"), spec.Name, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	c := &Cluster{Name: spec.Name, ID: spec.ID, Bundle: b, mesh: m, addr: "127.0.0.1:0",
		StateFile: filepath.Join(dir, "state.yaml"), ConfigDir: filepath.Join(dir, "remotes")}
	if err := os.MkdirAll(c.ConfigDir, 0o700); err != nil {
		return nil, err
	}
	if m.opts.cached(spec.Name) {
		c.CacheConfigDir = filepath.Join(dir, "cache-remotes")
		if err := os.MkdirAll(c.CacheConfigDir, 0o700); err != nil {
			return nil, err
		}
	}
	if m.opts.Hubble {
		if err := c.reserveHubble(); err != nil {
			return nil, err
		}
	}
	return c, c.WriteState(spec.State)
}

// reserveHubble issues the cluster's Observer certificates and reserves a
// loopback port for each agent's Observer API.
func (c *Cluster) reserveHubble() error {
	if err := c.mesh.ca.IssueObserverBundle(c.Bundle); err != nil {
		return fmt.Errorf("localmesh: Observer certificates of %s: %w", c.Name, err)
	}
	c.hubble, c.metrics = map[string]string{}, map[string]string{}
	for i := 1; i <= c.mesh.opts.AgentsPerCluster; i++ {
		for _, m := range []map[string]string{c.hubble, c.metrics} {
			l, err := portlock.Reserve()
			if err != nil {
				return fmt.Errorf("localmesh: a port for an agent of %s: %w", c.Name, err)
			}
			c.mesh.ports = append(c.mesh.ports, l)
			m[fmt.Sprintf("node-%d", i)] = l.Addr()
		}
	}
	return nil
}

// HubbleMetrics are the flow metrics the node agents count with
// Options.Hubble.
var HubbleMetrics = []string{"flow:sourceContext=cluster;destinationContext=cluster",
	"drop:sourceContext=cluster|namespace;destinationContext=pod", "tcp", "port-distribution", "icmp",
	"http:sourceContext=cluster;destinationContext=pod", "dns:query;sourceContext=pod"}

// Cluster returns the cluster called name, or nil.
func (m *Mesh) Cluster(name string) *Cluster {
	for _, c := range m.Clusters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// WriteState replaces the cluster's state file atomically; the apiserver and
// the agents pick it up on their next poll. With Options.Hubble, each node
// of the state that an agent runs on is annotated with its Observer
// address (st is not modified).
func (c *Cluster) WriteState(st *statesource.State) error {
	if c.hubble != nil {
		cp := *st
		cp.Nodes = slices.Clone(st.Nodes)
		for i := range cp.Nodes {
			if addr, ok := c.hubble[cp.Nodes[i].Name]; ok {
				cp.Nodes[i].Annotations = maps.Clone(cp.Nodes[i].Annotations)
				if cp.Nodes[i].Annotations == nil {
					cp.Nodes[i].Annotations = map[string]string{}
				}
				cp.Nodes[i].Annotations[wire.AnnotationHubbleAddress] = addr
			}
		}
		st = &cp
	}
	b, err := yaml.Marshal(st)
	if err != nil {
		return err
	}
	tmp := c.StateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, c.StateFile)
}

// StartAPIServer starts (or restarts, on the same address) the cluster's
// apiserver and waits until it has published its state.
func (c *Cluster) StartAPIServer(ctx context.Context) error {
	var peers []string
	for _, p := range c.mesh.opts.Clusters {
		if p.Name != c.Name {
			peers = append(peers, p.Name)
		}
	}
	cfg := meshapiserver.Config{
		ClusterName: c.Name, ClusterID: c.ID, ListenAddress: c.addr,
		ServerCertFile: c.Bundle.ServerCert(), ServerKeyFile: c.Bundle.ServerKey(), CAFile: c.Bundle.CAFile(),
		AdminCertFile: c.Bundle.AdminCert(), AdminKeyFile: c.Bundle.AdminKey(),
		Peers: peers, IdentityFile: filepath.Join(filepath.Dir(c.StateFile), "identities.json"),
		Source: &statesource.File{Path: c.StateFile, PollInterval: 200 * time.Millisecond, Logger: c.mesh.opts.Logger},
		Logger: c.mesh.opts.Logger,
	}
	if c.mesh.opts.APIServer != nil {
		c.mesh.opts.APIServer(&cfg)
	}
	srv, err := meshapiserver.New(cfg)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- srv.Run(sctx) }()
	select {
	case <-srv.Ready():
	case err := <-done:
		cancel()
		return fmt.Errorf("localmesh: apiserver %s: %w", c.Name, err)
	case <-ctx.Done():
		cancel()
		<-done
		return ctx.Err()
	}
	c.mu.Lock()
	c.server, c.stopSrv, c.srvDone = srv, cancel, done
	c.addr = strings.TrimPrefix(srv.ClientURL(), "https://")
	c.mu.Unlock()
	return nil
}

// StopAPIServer stops the cluster's apiserver (its etcd goes away with it).
func (c *Cluster) StopAPIServer() error {
	c.mu.Lock()
	stop, done := c.stopSrv, c.srvDone
	c.stopSrv, c.server = nil, nil
	c.mu.Unlock()
	if stop == nil {
		return nil
	}
	stop()
	return <-done
}

// APIServer returns the running apiserver, or nil.
func (c *Cluster) APIServer() *meshapiserver.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.server
}

// Address is the apiserver's host:port.
func (c *Cluster) Address() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addr
}

// Connect lets cluster from's agents read cluster to: it writes the config
// file for to into from's config directory. With Options.Cache, from's
// cache reads to, and the agents' config points at from's own apiserver.
func (m *Mesh) Connect(from, to string) error {
	f, t := m.Cluster(from), m.Cluster(to)
	if f == nil || t == nil {
		return fmt.Errorf("localmesh: unknown cluster %q or %q", from, to)
	}
	if m.opts.cached(f.Name) && f != t {
		if err := f.writeRemoteConfig(f.CacheConfigDir, to, t.Address()); err != nil {
			return err
		}
		return f.writeRemoteConfig(f.ConfigDir, to, f.Address())
	}
	return f.writeRemoteConfig(f.ConfigDir, to, t.Address())
}

// Disconnect removes cluster to from cluster from's config directory: from's
// agents drain everything they learned from to.
func (m *Mesh) Disconnect(from, to string) error {
	f := m.Cluster(from)
	if f == nil {
		return fmt.Errorf("localmesh: unknown cluster %q", from)
	}
	if m.opts.cached(from) && to != from {
		if err := os.Remove(filepath.Join(f.CacheConfigDir, to)); err != nil {
			return err
		}
	}
	return os.Remove(filepath.Join(f.ConfigDir, to))
}

// StopAgent stops the cluster's i-th agent, as a crash or an upgrade
// would: its pinned maps and programs stay in the kernel (and keep
// enforcing), its proxy and its sockets go. StartAgent runs it again.
func (c *Cluster) StopAgent(i int) error {
	a := c.Agents[i]
	if a.cancel == nil {
		return fmt.Errorf("localmesh: agent %s is not running", a.Name)
	}
	return a.stop()
}

// StartAgent runs the cluster's i-th agent again after StopAgent, with the
// same name and pin directory: a restarted agent.
func (c *Cluster) StartAgent(ctx context.Context, i int) error {
	old := c.Agents[i]
	if old.cancel != nil {
		return fmt.Errorf("localmesh: agent %s is running", old.Name)
	}
	if err := c.startAgent(ctx, old.Name); err != nil {
		return err
	}
	last := len(c.Agents) - 1
	c.Agents[i] = c.Agents[last]
	c.Agents = c.Agents[:last]
	if old.Node == nil {
		return old.Datapath.Close() // a node agent closed its own
	}
	return nil
}

func (c *Cluster) startAgent(ctx context.Context, name string) error {
	o := c.mesh.opts
	a := &Agent{Name: name}
	if o.EBPF {
		a.PinDir = filepath.Join("/sys/fs/bpf", "clustermesh-localmesh", fmt.Sprintf("%d-%s", os.Getpid(), name))
	}
	cfg := agentsync.Config{
		ClusterName: c.Name, ClusterID: c.ID, ConfigDir: c.ConfigDir,
		LocalSource:        &statesource.File{Path: c.StateFile, PollInterval: 200 * time.Millisecond, Logger: o.Logger},
		ConfigPollInterval: 50 * time.Millisecond, ProbeInterval: o.ProbeInterval, ProbeTimeout: time.Second,
		BackoffInitial: 50 * time.Millisecond, BackoffMax: time.Second,
		Logger: o.Logger.With("agent", name),
	}
	run, err := c.newNode(a, cfg)
	if run == nil && err == nil {
		run, err = c.newSyncAgent(a, cfg)
	}
	if err != nil {
		return fmt.Errorf("starting agent %s: %w", name, err)
	}
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.cancel, a.ended = cancel, make(chan struct{})
	go func() {
		defer close(a.ended)
		a.err = run(actx)
	}()
	c.Agents = append(c.Agents, a)
	return nil
}

// newSyncAgent makes a the sync agent alone, on its own datapath.
func (c *Cluster) newSyncAgent(a *Agent, cfg agentsync.Config) (func(context.Context) error, error) {
	var err error
	if a.PinDir != "" {
		a.Datapath, err = datapath.OpenMaps(datapath.Config{PinDir: a.PinDir, NoIPCacheMirror: true})
	} else {
		a.Datapath = datapath.NewMemory()
	}
	if err != nil {
		return nil, fmt.Errorf("opening the datapath: %w", err)
	}
	cfg.Datapath = a.Datapath
	if c.mesh.opts.Agent != nil {
		c.mesh.opts.Agent(&cfg)
	}
	if a.Sync, err = agentsync.New(cfg); err != nil {
		a.Datapath.Close()
		return nil, err
	}
	return a.Sync.Run, nil
}

// newNode makes a a whole node agent when Options.Node asks for it; it
// returns nil, nil when it does not.
func (c *Cluster) newNode(a *Agent, sync agentsync.Config) (func(context.Context) error, error) {
	o := c.mesh.opts
	if o.Node == nil {
		return nil, nil
	}
	cfg := node.NewConfig()
	cfg.Sync, cfg.Source, cfg.Logger = sync, sync.LocalSource, sync.Logger
	cfg.InMemory, cfg.Maps.PinDir = !o.EBPF, a.PinDir
	cfg.SocketLB, cfg.StatusAddr, cfg.MetricsAddr, cfg.Hubble.SocketPath = false, "", "", ""
	if o.Hubble {
		stateNode := "node-" + a.Name[strings.LastIndex(a.Name, "-")+1:]
		a.HubbleSocket, a.HubbleAddress = filepath.Join(o.Dir, "hubble", a.Name+".sock"), c.hubble[stateNode]
		a.MetricsAddress, cfg.MetricsAddr = c.metrics[stateNode], c.metrics[stateNode]
		h := &cfg.Hubble
		h.Metrics = HubbleMetrics
		h.SocketPath, h.ListenAddress = a.HubbleSocket, a.HubbleAddress
		h.TLSCertFile, h.TLSKeyFile, h.TLSClientCAFile = c.Bundle.ObserverCert(), c.Bundle.ObserverKey(), c.Bundle.CAFile()
	}
	if !o.Node(a.Name, &cfg) {
		return nil, nil
	}
	if o.Agent != nil {
		o.Agent(&cfg.Sync)
	}
	n, err := node.New(cfg)
	if err != nil {
		return nil, err
	}
	a.Node, a.Sync, a.Datapath = n, n.Sync(), n.Datapath()
	return n.Run, nil
}

// Close stops every agent and apiserver and removes the agents' pinned maps.
func (m *Mesh) Close() error {
	var errs []error
	for _, c := range m.Clusters {
		for _, a := range c.Agents {
			if a.cancel != nil {
				errs = append(errs, a.stop()) // a node closed its datapath
			}
			if _, ok := a.Datapath.(*datapath.Maps); ok {
				errs = append(errs, node.RemovePins(a.PinDir)) // its programs' pins too
			}
			if a.Node == nil {
				errs = append(errs, a.Datapath.Close())
			}
		}
		c.Agents = nil
		c.StopCache()
		errs = append(errs, c.StopAPIServer())
	}
	if m.opts.EBPF {
		os.Remove(filepath.Join("/sys/fs/bpf", "clustermesh-localmesh"))
	}
	for _, l := range m.ports {
		l.Release()
	}
	m.ports = nil
	return errors.Join(errs...)
}
