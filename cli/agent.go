package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wireguard"
)

func newAgentCmd() *cobra.Command {
	var cfg agentsync.Config
	var stateFile, pinDir, statusAddr, metricsAddr, cgroup, stateSource, kubeconfig, kubeContext string
	var dpCfg datapath.Config // the map sizes, from their flags
	var socketLB bool
	var cleanup bool
	var wgf wireguardFlags
	var pf policyFlags
	var kpf kubePolicyFlags
	var report agentReportFlags
	cmd := &cobra.Command{
		Use:   "agent --cluster-name NAME --cluster-id ID --config-dir DIR --state-file FILE",
		Short: "Run the node agent: sync every remote cluster into the local eBPF maps",
		Long: `Run the node agent of one cluster. It connects to every remote cluster whose
etcd client config is in --config-dir (one file per cluster, named after it:
endpoints, trusted-ca-file, cert-file, key-file), validates everything it
receives, and merges remote ipcache entries and global-service backends with
the local cluster's global services (from --state-file) into eBPF maps pinned
under --bpf-pin-dir.

Adding a file connects, changing it reconnects, removing it disconnects and
drains that cluster. When a remote fails, its last state keeps serving; it is
replaced only after a complete resync. Pinned maps outlive the agent, so a
restart does not interrupt traffic.

Without the privileges for eBPF the agent runs on an in-memory datapath and
says so. Its status is served on --status-addr for 'clustermesh status'.

With --enable-wireguard the agent encrypts traffic to the other clusters'
nodes: it finds --node-name in the state file (its IP and pod CIDRs), opens a
WireGuard device (the kernel's, else a userspace one), publishes the public
key as <node-name>.pub in --node-keys-dir for the cluster's apiserver (its
--node-keys-dir) and makes every remote node with a published key a peer,
routing its pod CIDR through the device. --rotate-wireguard-key, or SIGUSR1
while running, rotates the key; the new key reaches the peers through the
mesh. The device, its routes and rules are removed when the agent exits.

With --policy-dir the agent enforces cross-cluster policy on the endpoints
of --node-name, on their host-side veth (named in the state, else the veth
a host route sends the pod's address to): it reads the
identities of its own cluster from the config in --config-dir named after
it (its own apiserver), computes what each endpoint may do from the
policies and every cluster's identities, and attaches the policy programs
(tc) to the interfaces. Flows (every drop, new connections, samples) are
served on --status-addr for 'clustermesh observe'.

With --state-source=kubernetes the agent reports a compact status (remotes
connected and synced, their last errors, the global services' remote
backends) in the Lease clustermesh-agent-<node> of --report-namespace,
written when it changes (at most every --report-interval) and every 30s, and
deleted when it exits; 'clustermesh status --context' sums them up. The node
is --node-name, else $NODE_NAME, else the host name.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := wgf.check(cmd); err != nil {
				return err
			}
			if err := kpf.check(cmd, stateSource, wgf.nodeName); err != nil {
				return err
			}
			kubePolicies := kpf.enabled(stateSource, wgf.nodeName)
			if err := pf.check(cmd, wgf.nodeName, kubePolicies); err != nil {
				return err
			}
			if cleanup {
				if err := datapath.RemovePins(pinDir); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed the pinned maps in %s\n", pinDir)
				return nil
			}
			dpCfg.PinDir, dpCfg.NoIPCacheMirror = pinDir, true
			dp, err := datapath.Open(dpCfg, slog.Default())
			if err != nil {
				return err
			}
			defer dp.Close()
			if socketLB {
				lb, err := attachSocketLB(dp, cgroup)
				if err != nil {
					return err
				}
				if lb != nil {
					defer lb.Close()
				}
			}
			cfg.Datapath = dp
			switch stateSource {
			case "file":
				if stateFile == "" {
					return fmt.Errorf("--state-file is required with --state-source=file")
				}
				cfg.LocalSource = &statesource.File{Path: stateFile, Logger: slog.Default()}
			case "kubernetes":
				src, err := newKubeStateSource(kubeconfig, kubeContext, slog.Default())
				if err != nil {
					return err
				}
				cfg.LocalSource = src
			default:
				return fmt.Errorf("--state-source %q: want file or kubernetes", stateSource)
			}
			cfg.Logger = slog.Default()
			var wg *wireguard.Agent
			if wgf.enable {
				// The WireGuard agent wraps the local source: it opens the
				// device at the first state, and closes it when agent.Run
				// returns.
				if wg, err = wgf.newAgent(cfg.LocalSource); err != nil {
					return err
				}
				cfg.LocalSource, cfg.OnRemoteNodes = wg, wg.SetRemoteNodes
			}
			var agent *agentsync.Agent
			var pol *agentPolicy
			if pf.dir != "" || kubePolicies {
				clusterName := func(id uint16) string { return agent.ClusterName(id) } // called once running
				if pol, err = pf.newAgentPolicy(&cfg, dp, wgf.nodeName, clusterName); err != nil {
					return err
				}
				defer pol.close()
				if kubePolicies {
					if pol.kube, err = kubePolicyWatcher(kubeconfig, kubeContext, pol.enf); err != nil {
						return err
					}
				}
			}
			if agent, err = agentsync.New(cfg); err != nil {
				return err
			}
			status := func() AgentStatus {
				st := AgentStatus{Status: agent.Status()}
				if wg != nil {
					s := wg.Status()
					st.WireGuard = &s
				}
				if pol != nil {
					s := pol.enf.Status()
					st.Policy = &s
					if pol.kube != nil {
						ks := pol.kube.Status()
						st.KubernetesPolicy = &ks
					}
				}
				return st
			}
			collectors := []prometheus.Collector{agentsync.NewCollector(agent)}
			servers := []func(context.Context) error{
				func(ctx context.Context) error { return serveStatus(ctx, statusAddr, status, pol.handlers()) },
			}
			if pol != nil {
				collectors = append(collectors, pol.collectors()...)
				servers = append(servers, pol.servers(agent)...)
			}
			reporter, err := report.server(stateSource, kubeconfig, kubeContext, wgf.nodeName, status)
			if err != nil {
				return err
			}
			if reporter != nil {
				servers = append(servers, reporter)
			}
			servers = append(servers, func(ctx context.Context) error { return serveMetrics(ctx, metricsAddr, collectors...) })
			if wg != nil {
				usr1 := make(chan os.Signal, 1)
				signal.Notify(usr1, syscall.SIGUSR1)
				defer signal.Stop(usr1)
				servers = append(servers, rotateOnSignal(usr1, wg))
			}
			return runAll(cmd.Context(), agent.Run, servers...)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ClusterName, "cluster-name", "", "name of the local cluster")
	f.Uint32Var(&cfg.ClusterID, "cluster-id", 0, "id of the local cluster")
	f.Uint32Var(&cfg.MaxConnectedClusters, "max-connected-clusters", 255, "mesh size: 255 or 511 (the same on every cluster)")
	f.StringVar(&cfg.ConfigDir, "config-dir", "", "directory with one etcd client config per remote cluster")
	f.StringVar(&stateFile, "state-file", "", "the local cluster's state file (its global services and endpoints)")
	f.StringVar(&stateSource, "state-source", "file", "where the local cluster's services and endpoints come from: file (--state-file) or kubernetes (in a pod, the service account; else --kubeconfig)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "with --state-source=kubernetes outside a pod: the kubeconfig to read the cluster with")
	f.StringVar(&kubeContext, "context", "", "with --kubeconfig: its context to use (default: the current context)")
	f.StringVar(&pinDir, "bpf-pin-dir", datapath.DefaultPinDir, "bpffs directory the eBPF maps are pinned in")
	for _, o := range datapath.SizeOptions() {
		f.Uint32Var(o.Of(&dpCfg), o.Flag, o.Default, o.Usage)
	}
	f.StringVar(&statusAddr, "status-addr", agentsync.DefaultStatusAddr, "unix socket path or host:port to serve status on")
	f.StringVar(&metricsAddr, "metrics-addr", "127.0.0.1:9962", "host:port to serve Prometheus /metrics on, without authentication: localhost only by default; \":9962\" exposes them to every interface (\"\" disables)")
	f.DurationVar(&cfg.HeartbeatTimeout, "heartbeat-timeout", agentsync.DefaultHeartbeatTimeout, "a remote whose heartbeat is older is reported stale")
	f.DurationVar(&cfg.RemoteStateTTL, "remote-state-ttl", 0, "revoke the service backends (only) of a remote unreachable for longer than this; 0 keeps them forever")
	f.DurationVar(&cfg.ProbeInterval, "probe-interval", agentsync.DefaultProbeInterval, "how often each remote's heartbeat is read")
	f.DurationVar(&cfg.ProbeTimeout, "probe-timeout", agentsync.DefaultProbeTimeout, "a remote that does not answer within this is disconnected (its state is kept)")
	f.DurationVar(&cfg.SyncTimeout, "sync-timeout", agentsync.DefaultSyncTimeout, "after a restart, how long policy enforcement waits for the remotes' first sync; the entries a previous run left for a remote stay until that remote has fully synced, however long it takes")
	f.IntVar(&cfg.RemoteLimits.Nodes, "max-remote-nodes", agentsync.DefaultMaxRemoteNodes, "most nodes held from one remote cluster; new ones beyond are refused (counted, shown in status)")
	f.IntVar(&cfg.RemoteLimits.Identities, "max-remote-identities", agentsync.DefaultMaxRemoteIdentities, "most identities held from one remote cluster")
	f.IntVar(&cfg.RemoteLimits.IPCache, "max-remote-ipcache-entries", agentsync.DefaultMaxRemoteIPCache, "most ipcache entries (endpoints) held from one remote cluster, so that no peer crowds the others out of the ipcache map")
	f.IntVar(&cfg.RemoteLimits.Services, "max-remote-services", agentsync.DefaultMaxRemoteServices, "most global services held from one remote cluster")
	f.Int64Var(&cfg.RemoteLimits.Bytes, "max-remote-bytes", agentsync.DefaultMaxRemoteBytes, "most bytes of node, identity and service values held from one remote cluster")
	f.Int64Var(&cfg.ListPageBytes, "list-page-bytes", agentsync.DefaultListPageBytes, "largest list page read from a remote, in bytes (pages are also at most 2,000 entries)")
	f.BoolVar(&cfg.TrustRemoteAddresses, "trust-remote-addresses", false, "accept a remote's endpoints and backends outside its nodes' pod CIDRs and addresses (only for peers whose IPAM gives pods addresses outside any per-node CIDR, such as cloud ENI modes); then an address two clusters claim goes to the lower cluster id")
	f.DurationVar(&cfg.BackoffMax, "backoff-max", agentsync.DefaultBackoffMax, "longest wait between reconnect attempts")
	f.BoolVar(&socketLB, "socket-lb", true, "attach the eBPF socket load balancer (connect/sendmsg/recvmsg/getpeername) so that global services answer on their ClusterIP")
	f.StringVar(&cgroup, "cgroup", "", "cgroup v2 directory to attach the socket load balancer to (default: the cgroup v2 root)")
	f.BoolVar(&cleanup, "cleanup", false, "remove the pinned maps in --bpf-pin-dir and exit")
	wgf.register(cmd)
	pf.register(cmd)
	kpf.register(cmd)
	report.register(f)
	for _, r := range []string{"cluster-name", "cluster-id", "config-dir"} {
		cmd.MarkFlagRequired(r)
	}
	return cmd
}

// attachSocketLB attaches the socket load balancer to the real maps; on the
// in-memory datapath there is nothing to attach, and it says so.
func attachSocketLB(dp datapath.Datapath, cgroup string) (*datapath.SockLB, error) {
	maps, ok := dp.(*datapath.Maps)
	if !ok {
		slog.Warn("in-memory datapath: no socket load balancer; global services do not answer on their ClusterIP")
		return nil, nil
	}
	lb, err := datapath.AttachSockLB(maps, cgroup)
	if err != nil {
		return nil, fmt.Errorf("agent: socket load balancer: %w (or run with --socket-lb=false)", err)
	}
	slog.Info("socket load balancer attached", "cgroup", lb.Cgroup())
	return lb, nil
}

// runAll runs main and the servers beside it until main returns or one of
// them fails; then it stops the others and waits for them.
func runAll(ctx context.Context, main func(context.Context) error, servers ...func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel (defers run in reverse)
	defer cancel()
	serverErr := make(chan error, len(servers))
	for _, srv := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv(ctx); err != nil {
				serverErr <- err
			}
		}()
	}
	mainErr := make(chan error, 1)
	go func() { mainErr <- main(ctx) }()
	select {
	case err := <-mainErr:
		return err
	case err := <-serverErr:
		cancel()
		<-mainErr
		return err
	}
}
