package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"

	"github.com/clustermesh/clustermesh/kubemesh"
	"github.com/clustermesh/clustermesh/wire"
)

const enableLong = `Deploy a cluster's mesh apiserver through its kubeconfig context. In the
namespace --namespace it creates, or keeps when they are already right:

  secret/clustermesh-ca                      the mesh CA (ca.crt, ca.key)
  secret/clustermesh-apiserver-server-cert   the apiserver's server certificate
  secret/clustermesh-apiserver-admin-cert    admin-<cluster>: the apiserver writes with it
  secret/clustermesh-apiserver-remote-cert   remote-<cluster>: this cluster's agents
                                             read their peers with it
  configmap/clustermesh-config               cluster name, id and mesh size
  serviceaccount, clusterrole(binding)       read access for the Kubernetes state source
  role(binding)                              the apiserver keeps its identity numbers
                                             in configmap/clustermesh-identities
  deployment/clustermesh-apiserver           'clustermesh apiserver --state-source=kubernetes'
  service/clustermesh-apiserver              LoadBalancer (default) or NodePort, port 2379

Every cluster of a mesh needs the same CA: the first cluster creates one (or
takes --ca-dir, from 'clustermesh ca create'); the others take it with
--ca-from-context FIRST (or the same --ca-dir). A cluster that already holds
a different CA is refused.

Certificates are kept while they are valid with the CA for more than 30
days and the server certificate names every address clients may dial: the
service's cluster IP, its LoadBalancer ingress (once the cloud gave one: run
enable again, or let connect do it) or, for NodePort, the nodes' IPs, and
--server-ip/--server-dns. Otherwise they are re-issued and the Deployment
rolls.

With --endpoint-slices it also deploys 'clustermesh slices' (remote backends
of global services as EndpointSlices, and the MCS API controller:
docs/endpointslices.md, docs/mcs.md), as 'clustermesh manifests --slices'
prints it:

  serviceaccount/clustermesh-slices, clusterrole(binding), role(binding)
  deployment/clustermesh-slices              two replicas (one writes, by Lease),
                                             reading secret/clustermesh-remotes

Without the flag an existing writer is left as it is; 'clustermesh disable'
removes it and the EndpointSlices it wrote.

Running enable again changes nothing that is already right; --dry-run prints
the objects as YAML (private keys not shown) and writes nothing.`

func newEnableCmd() *cobra.Command {
	var kf kubeFlags
	var o kubemesh.EnableOptions
	cmd := &cobra.Command{
		Use:   "enable --context C --cluster-name NAME --cluster-id ID",
		Short: "Deploy the mesh apiserver in a Kubernetes cluster (CA, certificates, Deployment, Service)",
		Long:  enableLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Kubeconfig = kf.kubeconfig
			res, err := kubemesh.Enable(cmd.Context(), o)
			if perr := printEnable(cmd.OutOrStdout(), cmd.ErrOrStderr(), o, res, err == nil); err == nil {
				err = perr
			}
			return err
		},
	}
	f := cmd.Flags()
	kf.register(f)
	f.StringVar(&o.Context, "context", "", "kubeconfig context of the cluster (default: the current context)")
	f.StringVar(&o.Namespace, "namespace", defaultKubeNamespace, "namespace of the mesh apiserver")
	f.StringVar(&o.ClusterName, "cluster-name", "", "name of this cluster in the mesh (a-z, 0-9, '-'; at most 32)")
	f.Uint32Var(&o.ClusterID, "cluster-id", 0, "id of this cluster, 1..max-connected-clusters, unique in the mesh")
	f.Uint32Var(&o.MaxConnected, "max-connected-clusters", wire.DefaultMaxConnectedClusters, "mesh size: 255 or 511 (the same on every cluster)")
	f.StringVar(&o.ServiceType, "service-type", string(corev1.ServiceTypeLoadBalancer), "type of the apiserver's Service: LoadBalancer or NodePort")
	f.StringVar(&o.Image, "image", kubemesh.DefaultImage, "container image with the clustermesh binary")
	f.StringVar(&o.CADir, "ca-dir", "", "take the mesh CA from this directory (ca.crt, ca.key from 'clustermesh ca create')")
	f.StringVar(&o.CAFromContext, "ca-from-context", "", "take the mesh CA from the cluster of this kubeconfig context (already enabled)")
	f.StringSliceVar(&o.ServerDNS, "server-dns", nil, "extra DNS name of the server certificate (repeatable)")
	f.StringSliceVar(&o.ServerIPs, "server-ip", nil, "extra IP address of the server certificate (repeatable)")
	f.BoolVar(&o.DryRun, "dry-run", false, "print the objects as YAML and write nothing")
	f.BoolVar(&o.EndpointSlices, "endpoint-slices", false, "also deploy 'clustermesh slices': remote backends of global services as EndpointSlices, and the MCS API controller")
	f.StringVar(&o.ClusterSetIPRange, "clusterset-ip-range", "", "with --endpoint-slices: the CIDR ClusterSetIPs are allocated from (empty: Kubernetes allocates them)")
	cmd.MarkFlagRequired("cluster-name")
	cmd.MarkFlagRequired("cluster-id")
	cmd.MarkFlagsMutuallyExclusive("ca-dir", "ca-from-context")
	return cmd
}

// printEnable prints what enable did (done: all of it): the certificates
// re-issued and notes on errOut, the objects (or, in a dry run, their YAML)
// on out.
func printEnable(out, errOut io.Writer, o kubemesh.EnableOptions, res kubemesh.EnableResult, done bool) error {
	for _, r := range res.Reissued {
		fmt.Fprintf(errOut, "re-issuing %s: %s\n", r.Secret, r.Reason)
	}
	printObjects(out, res.Objects)
	if !done {
		return nil
	}
	if o.DryRun {
		fmt.Fprintf(out, "# clustermesh enable --dry-run: context %s, cluster %s (id %d); nothing was written\n", res.Context, o.ClusterName, o.ClusterID)
		return kubemesh.WriteYAML(out, true, res.Planned...)
	}
	if res.NewCA {
		fmt.Fprintf(errOut, "created a new mesh CA in secret %s/%s: enable the other clusters with --ca-from-context %s\n", res.Namespace, kubemesh.CASecretName, res.Context)
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(errOut, "warning: %s\n", w)
	}
	fmt.Fprintf(out, "cluster %s (id %d) enabled in context %s, namespace %s\n", o.ClusterName, o.ClusterID, res.Context, res.Namespace)
	return nil
}

// printObjects prints one line per object changed: "kind/name action",
// after "cluster NAME: " when the change names its cluster.
func printObjects(w io.Writer, changes []kubemesh.ObjectChange) {
	for _, c := range changes {
		printObject(w, c)
	}
}

func printObject(w io.Writer, c kubemesh.ObjectChange) {
	if c.Cluster != "" {
		fmt.Fprintf(w, "cluster %s: ", c.Cluster)
	}
	fmt.Fprintf(w, "%s/%s %s\n", c.Kind, c.Name, c.Action)
}
