package node_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/node"
)

// An agent of cluster east that enforces the policies of a directory on the
// endpoints of node-1, until SIGINT or SIGTERM. It needs root for its eBPF
// maps (without, it runs on the in-memory datapath and says so).
func Example() {
	cfg := node.NewConfig()
	cfg.Sync.ClusterName, cfg.Sync.ClusterID = "east", 1
	cfg.Sync.ConfigDir = "/etc/clustermesh/remotes" // one etcd client config per remote cluster
	cfg.StateFile = "/etc/clustermesh/state.yaml"
	cfg.NodeName, cfg.Policy.Dir = "node-1", "/etc/clustermesh/policies"
	n, err := node.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := n.Run(ctx); err != nil { // the maps stay pinned: a restart keeps serving
		log.Fatal(err)
	}
}

// The agent's command line: the flags are bound to a Config and default to
// NewConfig's values.
func ExampleConfig_RegisterFlags() {
	cfg := node.NewConfig()
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	cfg.RegisterFlags(fs)
	err := fs.Parse([]string{"--cluster-name", "east", "--cluster-id", "1", "--node-encryption"})
	fmt.Println(cfg.Sync.ClusterName, cfg.Sync.ClusterID, cfg.MetricsAddr, err)
	fmt.Println(cfg.CheckFlags(fs))
	// Output:
	// east 1 127.0.0.1:9962 <nil>
	// --node-encryption needs --enable-wireguard
}
