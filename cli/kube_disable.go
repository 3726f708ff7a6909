package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/kubemesh"
)

const disableLong = `Remove what 'clustermesh enable' created: the Deployment, the Service, the
certificate secrets, the config, the service account and its roles, and what
the apiserver and connect wrote: the identity numbers (configmap
clustermesh-identities), the remotes and the trusted peer CAs; and the
slices writer (enable --endpoint-slices) with the EndpointSlices it wrote. The mesh CA
secret stays (other clusters of the mesh share it) unless --delete-ca; the
namespace stays.

A cluster still connected to peers is refused (its peers would keep dialing
it): run 'clustermesh disconnect' first, or pass --force.`

func newDisableCmd() *cobra.Command {
	var kf kubeFlags
	var o kubemesh.DisableOptions
	cmd := &cobra.Command{
		Use:   "disable --context C",
		Short: "Remove the mesh apiserver from a Kubernetes cluster",
		Long:  disableLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Kubeconfig = kf.kubeconfig
			res, err := kubemesh.Disable(cmd.Context(), o)
			printObjects(cmd.OutOrStdout(), res.Objects)
			if err == nil && !o.DeleteCA {
				fmt.Fprintf(cmd.ErrOrStderr(), "kept secret %s/%s (the mesh CA): --delete-ca removes it\n", o.Namespace, kubemesh.CASecretName)
			}
			return err
		},
	}
	f := cmd.Flags()
	kf.register(f)
	f.StringVar(&o.Context, "context", "", "kubeconfig context of the cluster (default: the current context)")
	f.StringVar(&o.Namespace, "namespace", defaultKubeNamespace, "namespace of the mesh apiserver")
	f.BoolVar(&o.DeleteCA, "delete-ca", false, "also delete the mesh CA secret")
	f.BoolVar(&o.Force, "force", false, "disable even while connected to peers")
	return cmd
}
