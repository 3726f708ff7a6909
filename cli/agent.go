package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/k8spolicy"
	"github.com/clustermesh/clustermesh/node"
)

const agentLong = `Run the node agent of one cluster. It connects to every remote cluster whose
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
(tc) to the interfaces.

With --node-name (and --enable-hubble, on by default) the agent observes
every endpoint of its node, policy or not: policy verdicts, drops, new
connections and samples, and the socket load balancer's translations, served
with Hubble's Observer API on --hubble-socket-path (and with mutual TLS on
--hubble-listen-address) for 'hubble observe', 'clustermesh observe' and
'clustermesh relay'; see docs/observe.md.

With --state-source=kubernetes the agent reports a compact status (remotes
connected and synced, their last errors, the global services' remote
backends) in the Lease clustermesh-agent-<node> of --report-namespace,
written when it changes (at most every --report-interval) and every 30s, and
deleted when it exits; 'clustermesh status --context' sums them up. The node
is --node-name, else $NODE_NAME, else the host name.`

func newAgentCmd() *cobra.Command {
	cfg := node.NewConfig()
	var af agentFlags
	cmd := &cobra.Command{
		Use:   "agent --cluster-name NAME --cluster-id ID --config-dir DIR --state-file FILE",
		Short: "Run the node agent: sync every remote cluster into the local eBPF maps",
		Long:  agentLong,
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return af.run(cmd, &cfg) },
	}
	cfg.RegisterFlags(cmd.Flags())
	af.register(cmd)
	for _, r := range []string{"cluster-name", "cluster-id", "config-dir"} {
		cmd.MarkFlagRequired(r)
	}
	return cmd
}

// agentFlags are the agent command's flags beside the node's: where the
// local state comes from, the Kubernetes policies and report, --cleanup.
type agentFlags struct {
	stateSource, kubeconfig, kubeContext string
	cleanup                              bool
	kubePolicy                           kubePolicyFlags
	report                               agentReportFlags
}

func (a *agentFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&a.stateSource, "state-source", "file", "where the local cluster's services and endpoints come from: file (--state-file) or kubernetes (in a pod, the service account; else --kubeconfig)")
	f.StringVar(&a.kubeconfig, "kubeconfig", "", "with --state-source=kubernetes outside a pod: the kubeconfig to read the cluster with")
	f.StringVar(&a.kubeContext, "context", "", "with --kubeconfig: its context to use (default: the current context)")
	f.BoolVar(&a.cleanup, "cleanup", false, "remove the pinned maps in --bpf-pin-dir and exit")
	a.kubePolicy.register(cmd)
	a.report.register(f)
}

// run runs the node agent of cfg, with what runs beside it: the key
// rotation on SIGUSR1 and the Kubernetes report.
func (a *agentFlags) run(cmd *cobra.Command, cfg *node.Config) error {
	if err := a.checkFlags(cmd, cfg); err != nil {
		return err
	}
	if a.cleanup {
		if err := node.RemovePins(cfg.Maps.PinDir); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "removed the pinned maps in %s\n", cfg.Maps.PinDir)
		return nil
	}
	if err := a.setLocalSource(cfg); err != nil {
		return err
	}
	cfg.Logger = slog.Default()
	n, err := node.New(*cfg)
	if err != nil {
		return err
	}
	reporter, err := a.report.server(a.stateSource, a.kubeconfig, a.kubeContext, cfg.NodeName, n.Status)
	if err != nil {
		n.Close()
		return err
	}
	var beside []func(context.Context) error
	if reporter != nil {
		beside = append(beside, reporter)
	}
	if wg := n.WireGuard(); wg != nil {
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		defer signal.Stop(usr1)
		beside = append(beside, rotateOnSignal(usr1, wg))
	}
	return runAll(cmd.Context(), n.Run, beside...)
}

// checkFlags refuses flags that mean nothing with the others, after
// setting the cluster's policies in cfg when they are asked for.
func (a *agentFlags) checkFlags(cmd *cobra.Command, cfg *node.Config) error {
	if err := a.kubePolicy.check(cmd, a.stateSource, cfg.NodeName); err != nil {
		return err
	}
	if a.kubePolicy.enabled(a.stateSource, cfg.NodeName) {
		cfg.Policy.Kubernetes = func(enf *enforcer.Enforcer) (*k8spolicy.Watcher, error) {
			return kubePolicyWatcher(a.kubeconfig, a.kubeContext, enf)
		}
	}
	return cfg.CheckFlags(cmd.Flags())
}

// setLocalSource sets where the local state comes from in cfg.
func (a *agentFlags) setLocalSource(cfg *node.Config) error {
	switch a.stateSource {
	case "file":
		if cfg.StateFile == "" {
			return fmt.Errorf("--state-file is required with --state-source=file")
		}
	case "kubernetes":
		src, err := newKubeStateSource(a.kubeconfig, a.kubeContext, slog.Default())
		if err != nil {
			return err
		}
		cfg.Source = src
	default:
		return fmt.Errorf("--state-source %q: want file or kubernetes", a.stateSource)
	}
	return nil
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
