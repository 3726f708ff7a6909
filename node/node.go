// Package node is the node agent, assembled once, as etcd's embed is an
// etcd server: `clustermesh agent`, the demo and the end-to-end tests all
// run it through New and Run.
//
// It owns the agent's composition and lifetime: one Config with its
// defaults (NewConfig), validation and flags (RegisterFlags, CheckFlags);
// the datapath it opens (pinned eBPF maps, else in memory), the socket
// load balancer, the local state source — run once, each state handed to
// every consumer (fanout.go) — the sync agent (agentsync), and the
// optional parts beside it: WireGuard (package wireguard), the policy
// enforcer (package enforcer) with the cluster's policy objects (package
// k8spolicy) and the flows (package observe). It owns the agent's status
// schema (Status), its printer (PrintStatus) and the status, flow and
// metrics servers. Each part is built in New, each dependency given at
// construction; Run runs every part, stops them all when one fails, waits
// for them and releases what New opened.
//
// Beyond New, Run and Status, a Node hands out its parts (Sync, Datapath,
// Enforcer, Flows, WireGuard) for what runs beside it: the command's
// SIGUSR1 key rotation and Kubernetes status report, and the tests.
package node

import (
	"context"
	"errors"
	"fmt"
	flowpb "github.com/cilium/cilium/api/v1/flow"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/datapath/socklb"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/flowexport"
	"github.com/clustermesh/clustermesh/flowmetrics"
	"github.com/clustermesh/clustermesh/k8spolicy"
	"github.com/clustermesh/clustermesh/observe"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
	"github.com/clustermesh/clustermesh/wireguard"
)

// Node is one node agent. Create with New, run with Run (once); Status
// may be called at any time.
type Node struct {
	cfg  Config
	log  *slog.Logger
	dp   datapath.Datapath
	maps *datapath.Maps // dp when it is eBPF maps, else nil

	// The policy datapath, nil without a policy: pol is what the enforcer
	// writes, progs the policy programs when on eBPF maps (pol then).
	pol   tcpolicy.Writer
	progs *tcpolicy.Programs

	local *fanout
	sync  *agentsync.Agent
	wg    *wireguard.Agent // nil without WireGuard

	// The policy side, nil without a policy: enfLocal is the enforcer's
	// view of the local state, kube the cluster's policy objects (nil
	// unless asked for), hub the flows (nil on the in-memory datapath).
	enf      *enforcer.Enforcer
	enfLocal *view
	kube     *k8spolicy.Watcher
	hub      *observe.Hub
	names    *flowNames // the hub's enricher, nil without a hub
	peers    *meshPeers // Hubble's Peer service, nil without a hub
	// The hub's outputs beside its API: flowMetrics holds the flow
	// metrics' collectors (metrics counts), export the flow export (nil
	// without its configuration).
	flowMetrics *collectorList
	metrics     *flowmetrics.Metrics
	export      *flowexport.Manager
	// l7 is the L7 proxy and the FQDN cache (nil unless policy is
	// enforced on the eBPF datapath with L7.Enable); l7Metrics their
	// collectors.
	l7        *l7
	l7Metrics collectorList

	running   atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// New validates cfg, opens the datapath and builds every part of the
// agent; nothing runs before Run. A Node that will not run must be
// released with Close.
func New(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger}
	if err := n.openDatapath(); err != nil {
		return nil, err
	}
	if err := n.build(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) openDatapath() error {
	if n.cfg.InMemory {
		n.dp = datapath.NewMemory()
		return nil
	}
	mc := n.cfg.Maps
	mc.NoIPCacheMirror = true // the merger never repeats a write
	dp, err := datapath.Open(mc, n.log)
	if err != nil {
		return fmt.Errorf("opening the pinned maps in %q: %w", mc.PinDir, err)
	}
	n.dp = dp
	n.maps, _ = dp.(*datapath.Maps)
	return nil
}

// build makes the parts, each after what it depends on: WireGuard before
// the sync agent (which hands it the remote nodes), the sync agent before
// the enforcer (which reads its cluster names and retained clusters).
func (n *Node) build() error {
	c := &n.cfg
	src := c.Source
	if src == nil {
		src = &statesource.File{Path: c.StateFile, Logger: n.log}
	}
	n.local = newFanout(src)
	if c.WireGuard.Enable {
		dev := c.WireGuard.Device
		if dev.Logger == nil {
			dev.Logger = n.log
		}
		wg, err := wireguard.NewAgent(wireguard.AgentConfig{Device: dev, NodeName: c.NodeName, Source: n.local.view(),
			NodeKeysDir: c.WireGuard.KeysDir, RotateAtStart: c.WireGuard.RotateAtStart, Logger: n.log})
		if err != nil {
			return fmt.Errorf("configuring WireGuard: %w", err)
		}
		n.wg = wg
	}
	sc := c.Sync
	sc.LocalSource, sc.Datapath, sc.Logger = n.local.view(), n.dp, n.log
	sc.Identities, sc.OnRemoteNodes, sc.RecheckFlows, sc.NodeName = nil, nil, nil, ""
	var ids *identityRelay
	if c.Policy.enabled() || c.observing() {
		if err := n.openPolicy(); err != nil {
			return err
		}
		// The node's addresses are the host identity in the ipcache.
		ids, sc.NodeName = &identityRelay{}, c.NodeName
		sc.Identities = ids
		if n.progs != nil {
			sc.RecheckFlows = n.progs.RecheckFlows // cached verdicts follow ipcache identity changes
		}
	}
	if n.progs != nil && c.Hubble.Enable {
		n.peers = newMeshPeers(c.Sync.ClusterName, n.local.view(), n.log)
	}
	sc.OnRemoteNodes = n.onRemoteNodes
	var err error
	if n.sync, err = agentsync.New(sc); err != nil {
		return fmt.Errorf("configuring the sync agent: %w", err)
	}
	if ids != nil {
		return n.buildPolicy(ids)
	}
	return nil
}

// onRemoteNodes hands every remote's nodes to WireGuard and to the peer
// service (nil when neither runs).
func (n *Node) onRemoteNodes(nodes []*wire.Node) {
	if n.wg != nil {
		n.wg.SetRemoteNodes(nodes)
	}
	if n.peers != nil {
		n.peers.setRemoteNodes(nodes)
	}
}

// identityRelay hands the sync agent's identities to the enforcer. The
// sync agent is built first (the enforcer is built with its cluster names
// and retained clusters), so the relay gets its enforcer once that exists,
// still in New: identities come only once the sync agent runs.
type identityRelay struct{ enf *enforcer.Enforcer }

func (r *identityRelay) UpsertIdentity(cluster string, id uint32, labels wire.Labels) {
	r.enf.UpsertIdentity(cluster, id, labels)
}

func (r *identityRelay) DeleteIdentity(cluster string, id uint32) { r.enf.DeleteIdentity(cluster, id) }

// openPolicy opens the policy programs' maps beside the eBPF maps, or the
// in-memory policy beside the in-memory datapath.
func (n *Node) openPolicy() error {
	if n.maps == nil {
		n.pol = tcpolicy.NewMemory()
		return nil
	}
	progs, err := tcpolicy.Open(n.maps, n.cfg.Policy.Maps)
	if err != nil {
		return fmt.Errorf("opening the policy maps in %q: %w", n.cfg.Maps.PinDir, err)
	}
	n.pol, n.progs = progs, progs
	return nil
}

// buildPolicy makes the enforcer, the cluster's policy watcher and the
// flow hub.
func (n *Node) buildPolicy(ids *identityRelay) error {
	c := &n.cfg
	ecfg := enforcer.Config{
		ClusterName: c.Sync.ClusterName, ClusterID: uint16(c.Sync.ClusterID), NodeName: c.NodeName,
		PolicyDir: c.Policy.Dir, AllClustersByDefault: !c.Policy.DefaultLocalCluster, Policy: n.pol,
		ClusterNames: n.sync.ClusterName, RetainedClusters: n.sync.RetainedClusters,
		MaxConnectedClusters: c.Sync.MaxConnectedClusters, ReloadInterval: c.Policy.ReloadInterval, Logger: n.log,
	}
	audit, err := enforcer.ParseAuditNamespaces(c.Policy.AuditNamespaces)
	if err != nil {
		return fmt.Errorf("--policy-audit-namespaces: %w", err)
	}
	ecfg.AuditNamespaces = audit
	if n.progs != nil {
		ecfg.Attacher = enforcer.ProgramsAttacher{Programs: n.progs, InNetns: c.Policy.InNetns}
		if err := n.buildL7(&ecfg); err != nil {
			return err
		}
	} else {
		n.log.Warn("in-memory datapath: policies are computed but not enforced (run as root with bpffs for eBPF)")
	}
	enf, err := enforcer.New(ecfg)
	if err != nil {
		return fmt.Errorf("configuring the policy enforcer: %w", err)
	}
	ids.enf, n.enf, n.enfLocal = enf, enf, n.local.view()
	if c.Policy.Kubernetes != nil {
		if n.kube, err = c.Policy.Kubernetes(enf); err != nil {
			return fmt.Errorf("watching the cluster's policies: %w", err)
		}
	}
	if n.progs != nil && c.Hubble.Enable {
		if err := n.buildFlowOutputs(); err != nil {
			return err
		}
		n.names = &flowNames{cluster: c.Sync.ClusterName, enf: enf, sync: n.sync, local: n.local.view()}
		if n.l7 != nil {
			n.names.fqdn = n.l7.cache
		}
		n.hub = observe.NewHub(observe.Config{Enricher: n.names, NodeName: c.hubbleNodeName(), MaxConnectedClusters: c.Sync.MaxConnectedClusters,
			Capacity: c.Hubble.EventBufferCapacity, Logger: n.log, OnFlow: []func(*flowpb.Flow){n.metrics.Observe}})
	}
	return nil
}

// Run runs the agent until ctx is done or a part fails (its error is
// returned, naming the part): every part then stops, Run waits for them
// and releases the datapath, the socket load balancer and the flows. The
// pinned maps and the policy programs stay: they keep serving while the
// agent restarts. Run once.
func (n *Node) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return errors.New("the node agent runs once: create a new Node")
	}
	defer n.Close()
	lb, err := n.attachSocketLB()
	if err != nil {
		return err
	}
	if lb != nil {
		defer lb.Close()
	}
	srcs, err := n.openFlows(lb)
	if err != nil {
		return err
	}
	for _, r := range srcs {
		defer r.Close()
	}
	return runParts(ctx, n.parts(srcs))
}

// Close releases what New opened (the datapath, the policy maps) for a
// Node that does not run; Run does it when it returns. It is idempotent.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		if n.progs != nil {
			if err := n.progs.Close(); err != nil {
				errs = append(errs, fmt.Errorf("closing the policy maps: %w", err))
			}
		}
		if n.l7 != nil {
			if err := n.l7.proxy.Close(); err != nil {
				errs = append(errs, fmt.Errorf("stopping the L7 proxy: %w", err))
			}
		}
		if err := n.dp.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing the datapath: %w", err))
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

// attachSocketLB attaches the socket load balancer to the real maps; on
// the in-memory datapath there is nothing to attach, and it says so.
func (n *Node) attachSocketLB() (*socklb.LB, error) {
	if !n.cfg.SocketLB {
		return nil, nil
	}
	if n.maps == nil {
		n.log.Warn("in-memory datapath: no socket load balancer; global services do not answer on their ClusterIP")
		return nil, nil
	}
	lb, err := socklb.Attach(n.maps, n.cfg.Cgroup, n.cfg.SocketLBMaps)
	if err != nil {
		return nil, fmt.Errorf("attaching the socket load balancer: %w (or run with --socket-lb=false)", err)
	}
	n.log.Info("socket load balancer attached", "cgroup", lb.Cgroup())
	return lb, nil
}

// openFlows sets what the policy programs report and opens their flow
// events, and the socket load balancer's translations, when there is a
// hub to read them.
func (n *Node) openFlows(lb *socklb.LB) ([]*flows.Reader, error) {
	if n.hub == nil {
		return nil, nil
	}
	fc := flows.Config{SampleRate: n.cfg.Policy.FlowSampleRate, TraceNew: n.cfg.Policy.FlowTraceNew,
		PolicyVerdicts: true, ClusterID: uint16(n.cfg.Sync.ClusterID)}
	if err := n.progs.SetFlowConfig(fc); err != nil {
		return nil, fmt.Errorf("configuring the flow events: %w", err)
	}
	r, err := n.progs.OpenFlows()
	if err != nil {
		return nil, fmt.Errorf("opening the flow events: %w", err)
	}
	if lb == nil {
		return []*flows.Reader{r}, nil
	}
	t, err := lb.OpenEvents()
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("opening the socket load balancer's translation events: %w", err)
	}
	return []*flows.Reader{r, t}, nil
}

// Sync is the sync agent: the remotes, their status and the merge.
func (n *Node) Sync() *agentsync.Agent { return n.sync }

// Datapath is the datapath the agent writes: *datapath.Maps, or the
// in-memory one.
func (n *Node) Datapath() datapath.Datapath { return n.dp }

// Policy is where the enforcer writes the policy: *tcpolicy.Programs on
// the eBPF datapath, else a *tcpolicy.Memory; nil without a policy.
func (n *Node) Policy() tcpolicy.Writer { return n.pol }

// Enforcer is the policy enforcer, nil without a policy.
func (n *Node) Enforcer() *enforcer.Enforcer { return n.enf }

// Flows is the hub of the policy programs' flows, nil without Hubble (or
// a node name) or on the in-memory datapath.
func (n *Node) Flows() *observe.Hub { return n.hub }

// WireGuard is the WireGuard agent (RotateKey), nil without WireGuard.
func (n *Node) WireGuard() *wireguard.Agent { return n.wg }

// collectors are the metrics of every part.
func (n *Node) collectors() []prometheus.Collector {
	out := []prometheus.Collector{agentsync.NewCollector(n.sync)}
	if n.enf != nil {
		out = append(out, n.enf.Collector())
	}
	if n.kube != nil {
		out = append(out, n.kube.Collector())
	}
	out = append(out, n.l7Metrics.cs...)
	if n.hub != nil {
		out = append(out, n.hub.Collector())
		out = append(out, n.flowMetrics.cs...)
		out = append(out, n.peers.srv.Collector())
	}
	return out
}

// RemovePins removes what agents pinned in pinDir (empty: the default):
// the policy programs' maps and links (which detaches them), the socket
// load balancer's maps and the mesh maps, then pinDir if that left it
// empty (agent --cleanup). Each package removes its own pins.
func RemovePins(pinDir string) error {
	return errors.Join(tcpolicy.RemovePins(pinDir), socklb.RemovePins(pinDir), datapath.RemovePins(pinDir))
}
