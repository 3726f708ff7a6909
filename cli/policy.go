package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/k8spolicy"
	"github.com/clustermesh/clustermesh/observe"
)

// policyFlags are the agent's policy and flow flags.
type policyFlags struct {
	dir          string
	defaultLocal bool
	sampleRate   uint32
	traceNew     bool
}

// policyOnly are the flags that mean nothing without --policy-dir.
var policyOnly = []string{"policy-default-local-cluster", "flow-sample-rate", "flow-trace-new"}

func (p *policyFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&p.dir, "policy-dir", "", "enforce the policies in this directory (CiliumNetworkPolicy and NetworkPolicy YAML or JSON, read again on change; an invalid edit keeps the last valid set) on this node's endpoints (needs --node-name; see docs/policy.md)")
	f.BoolVar(&p.defaultLocal, "policy-default-local-cluster", true, "a peer selector without the io.cilium.k8s.policy.cluster label selects only the local cluster's pods; false: pods of every cluster")
	f.Uint32Var(&p.sampleRate, "flow-sample-rate", 0, "report one in this many forwarded packets as flows (drops are always reported); 0: none")
	f.BoolVar(&p.traceNew, "flow-trace-new", true, "report the first packet of every new connection as a flow")
}

// check refuses policy flags without --policy-dir, and --policy-dir
// without --node-name.
func (p *policyFlags) check(cmd *cobra.Command, nodeName string, kubePolicies bool) error {
	if p.dir == "" && !kubePolicies {
		for _, name := range policyOnly {
			if cmd.Flags().Changed(name) {
				return fmt.Errorf("--%s needs --policy-dir (or the cluster's policies: --state-source=kubernetes with --node-name)", name)
			}
		}
		return nil
	}
	if p.dir != "" && nodeName == "" {
		return fmt.Errorf("--policy-dir needs --node-name: the node's name in the local state, whose endpoints this agent enforces")
	}
	return nil
}

// agentPolicy is the policy side of a running agent.
type agentPolicy struct {
	enf   *enforcer.Enforcer
	flows *datapath.FlowReader // nil on the in-memory datapath
	hub   *observe.Hub         // nil with flows
	// kube watches the cluster's policy objects (nil unless
	// --state-source=kubernetes and --policy-from-kubernetes).
	kube *k8spolicy.Watcher
	// agent is set by servers, before the enforcer runs.
	agent *agentsync.Agent
}

// retainedClusters are the agent's clusters still holding entries of its
// previous run (called by the enforcer once running).
func (ap *agentPolicy) retainedClusters() []uint16 { return ap.agent.RetainedClusters() }

// newAgentPolicy builds the enforcer for the agent of cfg (which it hooks
// into: identities and the local source) and opens the flow events.
// clusterName resolves cluster ids once the agent exists.
func (p *policyFlags) newAgentPolicy(cfg *agentsync.Config, dp datapath.Datapath, nodeName string, clusterName func(uint16) string) (*agentPolicy, error) {
	pw, ok := dp.(datapath.PolicyWriter)
	if !ok {
		return nil, fmt.Errorf("policy: the %s datapath cannot hold policy", dp.Kind())
	}
	ap := &agentPolicy{}
	ecfg := enforcer.Config{
		ClusterName: cfg.ClusterName, ClusterID: uint16(cfg.ClusterID), NodeName: nodeName,
		PolicyDir: p.dir, AllClustersByDefault: !p.defaultLocal, Policy: pw,
		ClusterNames: clusterName, Logger: slog.Default(),
		RetainedClusters: ap.retainedClusters, MaxConnectedClusters: cfg.MaxConnectedClusters,
	}
	if maps, ok := dp.(*datapath.Maps); ok {
		ecfg.Attacher = enforcer.MapsAttacher{Maps: maps}
		cfg.RecheckFlows = maps.RecheckFlows // cached verdicts follow ipcache identity changes
		if err := maps.SetFlowConfig(datapath.FlowConfig{SampleRate: p.sampleRate, TraceNew: p.traceNew, ClusterID: uint16(cfg.ClusterID)}); err != nil {
			return nil, fmt.Errorf("policy: flow config: %w", err)
		}
		var err error
		if ap.flows, err = datapath.OpenFlows(maps); err != nil {
			return nil, err
		}
	} else {
		slog.Warn("in-memory datapath: policies are computed but not enforced (run as root with bpffs for eBPF)")
	}
	enf, err := enforcer.New(ecfg)
	if err != nil {
		ap.close()
		return nil, err
	}
	ap.enf = enf
	if ap.flows != nil {
		ap.hub = observe.NewHub(observe.Config{Enricher: enf})
	}
	cfg.LocalSource, cfg.Identities = enf.WrapSource(cfg.LocalSource), enf
	return ap, nil
}

func (ap *agentPolicy) close() {
	if ap.flows != nil {
		ap.flows.Close()
	}
}

// servers are the enforcer (writing once the agent has synced) and the
// flow hub.
func (ap *agentPolicy) servers(agent *agentsync.Agent) []func(context.Context) error {
	ap.agent = agent
	out := []func(context.Context) error{func(ctx context.Context) error {
		if ap.kube != nil {
			select { // never write a policy map without the cluster's objects
			case <-ap.kube.Synced():
			case <-ctx.Done():
				return nil
			}
		}
		return ap.enf.Run(ctx, agent.Pruned())
	}}
	if ap.kube != nil {
		out = append(out, ap.kube.Run)
	}
	if ap.hub != nil {
		out = append(out, func(ctx context.Context) error {
			if err := ap.hub.Run(ctx, ap.flows); err != nil {
				// Policy keeps being enforced; only observation stops.
				slog.Error("flow events can no longer be read: 'clustermesh observe' shows no new flows (restart the agent)", "err", err)
				<-ctx.Done()
			}
			return nil
		})
	}
	return out
}

// handlers are what the agent serves beside its status: the flows, on
// the eBPF datapath.
func (ap *agentPolicy) handlers() map[string]http.Handler {
	if ap == nil || ap.hub == nil {
		return nil
	}
	return map[string]http.Handler{"GET " + observe.Path: ap.hub.Handler()}
}

// collectors are the policy's and the flows' metrics.
func (ap *agentPolicy) collectors() []prometheus.Collector {
	out := []prometheus.Collector{ap.enf.Collector()}
	if ap.kube != nil {
		out = append(out, ap.kube.Collector())
	}
	if ap.hub != nil {
		out = append(out, ap.hub.Collector())
	}
	return out
}
