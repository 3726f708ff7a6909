package node_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/internal/unixsock"
	"github.com/clustermesh/clustermesh/localmesh"
	"github.com/clustermesh/clustermesh/node"
	"github.com/clustermesh/clustermesh/statesource"
)

const checkoutPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: checkout, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: checkout}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: west}}]
`

// memoryConfig is a policy-enforcing node agent of east on the in-memory
// datapath, with no remote, serving its status on a socket.
func memoryConfig(t *testing.T) node.Config {
	t.Helper()
	dir := t.TempDir()
	b, err := yaml.Marshal(localmesh.SampleState(1))
	if err != nil {
		t.Fatal(err)
	}
	cfg := node.NewConfig()
	cfg.Sync.ClusterName, cfg.Sync.ClusterID, cfg.Sync.ConfigDir = "east", 1, filepath.Join(dir, "remotes")
	cfg.StateFile, cfg.NodeName, cfg.Policy.Dir = filepath.Join(dir, "state.yaml"), "node-1", filepath.Join(dir, "policies")
	cfg.InMemory, cfg.SocketLB = true, false
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.StatusAddr, cfg.MetricsAddr = filepath.Join(dir, "agent.sock"), ""
	for _, d := range []string{cfg.Sync.ConfigDir, cfg.Policy.Dir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(cfg.StateFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.Policy.Dir, "checkout.yaml"), []byte(checkoutPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// runNode runs a node of cfg until stop (which returns Run's error; a test
// that does not call it has it called at cleanup), with the context it
// runs under.
func runNode(t *testing.T, cfg node.Config) (*node.Node, context.Context, func() error) {
	t.Helper()
	n, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	stop := sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	t.Cleanup(func() { stop() })
	return n, ctx, stop
}

// A node agent runs every part from one config: the local state reaches
// the sync agent (the global service) and the enforcer (the node's
// endpoints), the policy is computed once the sync agent has synced, and
// the status is served on the socket; it all stops with ctx and the socket
// goes.
func TestNodeRuns(t *testing.T) {
	cfg := memoryConfig(t)
	n, ctx, stop := runNode(t, cfg)
	var st node.Status
	var err error
	testenv.WaitFor(t, 20*time.Second, "the status served, the service and the node's endpoints known, the policy written", func() bool {
		st, err = node.FetchStatus(ctx, cfg.StatusAddr)
		if err != nil || st.Policy == nil || !st.Policy.Enforcing || len(st.Services) != 1 {
			return false
		}
		return len(st.Policy.Endpoints) == 2 // node-1's: checkout-2, frontend-1
	})
	if st.Cluster != "east" || st.Datapath != "memory" || st.WireGuard != nil || st.KubernetesPolicy != nil {
		t.Errorf("status %+v", st.Status)
	}
	for _, ep := range st.Policy.Endpoints {
		// No apiserver of its own cluster: the agent knows no local identity.
		if ep.State != enforcer.StateNoIdentity {
			t.Errorf("endpoint %s: %s, want %s", ep.Pod, ep.State, enforcer.StateNoIdentity)
		}
	}
	if n.Enforcer() == nil || n.Flows() != nil || n.WireGuard() != nil || n.Sync() == nil {
		t.Error("the node's parts: want an enforcer, no flows (in memory), no WireGuard")
	}
	if err := n.Run(ctx); err == nil {
		t.Error("a second Run did not fail")
	}
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if _, err := os.Stat(cfg.StatusAddr); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the status socket is left: %v", err)
	}
}

// A second agent given a running agent's status socket ends with
// unixsock.ErrInUse, telling what to do, and the first keeps serving its
// status there (before, the second removed the first one's socket).
func TestSecondAgentOnSocketRefused(t *testing.T) {
	first := memoryConfig(t)
	_, ctx, stop := runNode(t, first)
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("the first agent: %v", err)
		}
	}()
	testenv.WaitFor(t, 20*time.Second, "the first agent's status served", func() bool {
		_, err := node.FetchStatus(ctx, first.StatusAddr)
		return err == nil
	})
	second := memoryConfig(t)
	second.StatusAddr = first.StatusAddr
	n2, err := node.New(second)
	if err != nil {
		t.Fatal(err)
	}
	err = n2.Run(ctx)
	if !errors.Is(err, unixsock.ErrInUse) || !strings.Contains(err.Error(), "another path") {
		t.Fatalf("the second agent: %v, want ErrInUse saying what to do", err)
	}
	if _, err := node.FetchStatus(ctx, first.StatusAddr); err != nil {
		t.Errorf("the first agent's status after the second was refused: %v", err)
	}
}

// failingSource fails at once.
type failingSource struct{ err error }

func (f failingSource) Run(context.Context, func(*statesource.State)) error { return f.err }

// A part that fails ends the agent with an error naming what failed; the
// other parts stop with it.
func TestNodeStopsWhenAPartFails(t *testing.T) {
	cfg := memoryConfig(t)
	boom := errors.New("boom")
	cfg.Source = failingSource{boom}
	n, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = n.Run(context.Background())
	if !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "reading the local state: ") {
		t.Fatalf("Run: %v, want the source's error, named", err)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		change func(*node.Config)
		want   string
	}{
		{func(c *node.Config) { c.Sync.ClusterName = "" }, "cluster name"},
		{func(c *node.Config) { c.Sync.ConfigDir = "" }, "--config-dir"},
		{func(c *node.Config) { c.StateFile = "" }, "--state-file"},
		{func(c *node.Config) { c.NodeName = "" }, "--policy-dir needs --node-name"},
		{func(c *node.Config) { c.Policy.Dir, c.WireGuard.Enable, c.NodeName = "", true, "" }, "--enable-wireguard needs --node-name"},
		{func(c *node.Config) { c.InMemory, c.Maps.PinDir = false, "relative" }, "absolute"},
	} {
		cfg := memoryConfig(t)
		tc.change(&cfg)
		err := cfg.Validate()
		if !errors.Is(err, node.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate: %v, want %q", err, tc.want)
		}
		if _, err := node.New(cfg); err == nil {
			t.Errorf("New accepted a config Validate refuses (%q)", tc.want)
		}
	}
}

// The flags' defaults are NewConfig's; a flag that means nothing without
// another is refused.
func TestFlags(t *testing.T) {
	cfg := node.NewConfig()
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	def := node.NewConfig()
	if cfg.MetricsAddr != def.MetricsAddr || cfg.Sync.MaxConnectedClusters != def.Sync.MaxConnectedClusters || cfg.Maps != def.Maps ||
		!cfg.SocketLB || !cfg.Policy.FlowTraceNew || !cfg.Policy.DefaultLocalCluster || cfg.WireGuard.Device.ListenPort != def.WireGuard.Device.ListenPort {
		t.Errorf("flags changed the defaults: %+v", cfg)
	}
	for args, want := range map[string]string{
		"--node-encryption":                    "--node-encryption needs --enable-wireguard",
		"--flow-sample-rate=10":                "--flow-sample-rate needs --enable-hubble and --node-name",
		"--policy-default-local-cluster=false": "--policy-default-local-cluster needs --policy-dir",
		"--hubble-listen-address=:4244":        "--hubble-listen-address needs --enable-hubble and --node-name",
		"--wireguard-port=1":                   "--wireguard-port needs --enable-wireguard",
		"--flow-trace-new=false":               "--flow-trace-new needs --enable-hubble",
		"--enable-wireguard":                   "",
		"--policy-dir=/x":                      "",
		"--max-ipcache-entries=10":             "",
	} {
		cfg := node.NewConfig()
		fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
		cfg.RegisterFlags(fs)
		if err := fs.Parse([]string{args}); err != nil {
			t.Fatal(err)
		}
		err := cfg.CheckFlags(fs)
		if (want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", args, err, want)
		}
	}
}
