// Package cli holds clustermesh's cobra commands. It wires the pieces — ca,
// statesource, meshapiserver, agentsync, datapath, demo — by hand; nothing
// else imports both the apiserver and the agent.
package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// NewRoot returns the clustermesh command tree.
func NewRoot() *cobra.Command {
	var logLevel string
	root := &cobra.Command{
		Use:   "clustermesh",
		Short: "Join several clusters into one mesh: shared identities, ipcache and global services",
		Long: `clustermesh joins clusters into one mesh, the way Cilium ClusterMesh does.

Each cluster runs a mesh apiserver (an embedded etcd behind mutual TLS from a
shared CA) that publishes its nodes, identities, ipcache entries and global
services; every node runs an agent that watches the apiservers of all peer
clusters and merges what they publish into its eBPF maps.

Start with 'clustermesh demo': three clusters on loopback, no Kubernetes.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel)
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
			return nil
		},
	}
	root.PersistentFlags().StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.AddCommand(newCACmd(), newAPIServerCmd(), newAgentCmd(), newStatusCmd(), newDemoCmd(), newEnableCmd(), newDisableCmd(), newConnectCmd(), newDisconnectCmd(), newManifestsCmd(), newSlicesCmd(), newKVStoreMeshCmd(), newObserveCmd(), newRelayCmd(), newUICmd())
	return root
}

// Main runs the command line and returns the process exit code.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := NewRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	return 0
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
