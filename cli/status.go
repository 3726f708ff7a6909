package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/node"
)

func newStatusCmd() *cobra.Command {
	var addr, output, kubeContext, namespace string
	var timeout time.Duration
	var servicesOnly, wait bool
	var kf kubeFlags
	cmd := &cobra.Command{
		Use:   "status [--agent ADDR | --context C [--wait]] [-o json]",
		Short: "Show an agent's view of the mesh: remotes, counts, errors, global services",
		Long: `Show what one agent knows: for each remote cluster whether it is connected and
fully synced, its cluster id, how many nodes, endpoints, identities and services
it publishes, when the last event arrived, how many failures and rejected
entries there were, and the last error; then each global service with its local
and remote backend counts and which backends its affinity selected; then
encryption: the WireGuard device, its public key, MTU and peers, the last
handshake with each remote cluster's nodes (oldest and latest) and the bytes
sent and received. -o json adds "wireguard" to the JSON (absent when off).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "" && output != "json" && output != "table" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			if kubeContext != "" {
				// A Kubernetes cluster's mesh: its apiserver Deployment and
				// Service, its peers, and what its agents report.
				return runKubeStatus(cmd.Context(), &kf, kubeContext, namespace, wait, timeout, output == "json",
					cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			st, err := node.FetchStatus(ctx, addr)
			if err != nil {
				return err
			}
			if servicesOnly {
				if output == "json" {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(st.Services)
				}
				node.PrintServices(cmd.OutOrStdout(), st.Status)
				return nil
			}
			return node.PrintStatus(cmd.OutOrStdout(), st, output == "json")
		},
	}
	cmd.Flags().StringVar(&addr, "agent", node.DefaultStatusAddr, "the agent's status address (unix socket path or host:port)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "how long to wait for the agent")
	cmd.Flags().StringVar(&kubeContext, "context", "", "show a Kubernetes cluster's mesh status (kubeconfig context) instead of one agent's")
	cmd.Flags().StringVar(&namespace, "namespace", defaultKubeNamespace, "with --context: the namespace clustermesh runs in")
	cmd.Flags().BoolVar(&wait, "wait", false, "with --context: wait until the mesh is ready (or --timeout), saying what it still waits for")
	kf.register(cmd.Flags())
	cmd.Flags().BoolVar(&servicesOnly, "services", false, "only the global services: backends per cluster (healthy/total), selection, warnings")
	return cmd
}
