package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/kubemesh"
)

const disconnectLong = `Undo 'clustermesh connect' between the source and each destination, in both
directions: the agents drop the remote's config (and drain what they learned
from it) and the apiserver stops letting it read (and, after connect
--allow-mismatching-ca, the reader's certificate of the other CA goes); the
apiserver pod restarts.

Before anything is written, each global service that would be left without
backends is listed — one with no ready local backend that is served by the
cluster being disconnected, which is its only remote — and the disconnect is
refused unless --force.`

func newDisconnectCmd() *cobra.Command {
	var kf kubeFlags
	var o kubemesh.DisconnectOptions
	cmd := &cobra.Command{
		Use:   "disconnect --context A --destination-context B [--destination-context C ...]",
		Short: "Disconnect Kubernetes clusters: remove each one's config for the other and its read access",
		Long:  disconnectLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Kubeconfig = kf.kubeconfig
			res, err := kubemesh.Disconnect(cmd.Context(), o)
			if len(res.Stranded) > 0 && o.Force {
				var lines []string
				for _, s := range res.Stranded {
					lines = append(lines, s.String())
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: global services would be left without backends:\n  %s\n", strings.Join(lines, "\n  "))
			}
			printSteps(cmd.OutOrStdout(), res.Steps)
			return err
		},
	}
	f := cmd.Flags()
	kf.register(f)
	f.StringVar(&o.Context, "context", "", "kubeconfig context of the source cluster (default: the current context)")
	f.StringArrayVar(&o.Destinations, "destination-context", nil, "kubeconfig context of a cluster to disconnect from (repeatable)")
	f.StringVar(&o.Namespace, "namespace", defaultKubeNamespace, "namespace of the mesh apiservers (the same in every cluster)")
	f.BoolVar(&o.Force, "force", false, "disconnect even when global services would be left without backends")
	cmd.MarkFlagRequired("destination-context")
	return cmd
}
