package cli

import (
	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/kubemesh"
	"github.com/clustermesh/clustermesh/wire"
)

const manifestsLong = `Print the manifests that run the clustermesh agent on every node of a cluster: a
ServiceAccount, a ClusterRole and its binding (read Services, EndpointSlices,
Pods, Namespaces, Nodes), a Role and its binding (write the agent's status
report: a Lease per node, clustermesh-agent-<node>, that 'clustermesh status
--context' reads), and a DaemonSet. The agent runs privileged on the host
network, reads the local cluster from the Kubernetes API, the remote clusters
from the secret clustermesh-remotes that 'clustermesh connect' writes, pins its
eBPF maps under /sys/fs/bpf/clustermesh and attaches its socket load balancer to
the node's cgroup v2 root.

With --slices, also 'clustermesh slices' (docs/endpointslices.md, docs/mcs.md):
a Deployment of two replicas (one writes, elected through Leases) with its
RBAC, reading the same remotes secret, and the MCS API's CRDs.

  clustermesh manifests --cluster-name east --cluster-id 1 [--slices] | kubectl apply -f -`

func newManifestsCmd() *cobra.Command {
	o := kubemesh.ManifestsOptions{Namespace: defaultKubeNamespace, MaxConnected: wire.DefaultMaxConnectedClusters, Image: kubemesh.DefaultImage}
	cmd := &cobra.Command{
		Use:   "manifests --cluster-name NAME --cluster-id ID",
		Short: "Print the agent's DaemonSet and RBAC as YAML (for kubectl apply or GitOps)",
		Long:  manifestsLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			objs, err := kubemesh.AgentManifests(o)
			if err != nil {
				return err
			}
			return kubemesh.WriteYAML(cmd.OutOrStdout(), false, objs...)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ClusterName, "cluster-name", "", "name of the cluster")
	f.Uint32Var(&o.ClusterID, "cluster-id", 0, "id of the cluster")
	f.Uint32Var(&o.MaxConnected, "max-connected-clusters", o.MaxConnected, "mesh size: 255 or 511")
	f.StringVar(&o.Namespace, "namespace", o.Namespace, "namespace clustermesh runs in")
	f.StringVar(&o.Image, "image", o.Image, "container image with the clustermesh binary")
	f.BoolVar(&o.EnforcePolicy, "enforce-policy", false, "the agents enforce the cluster's NetworkPolicy and CiliumNetworkPolicy objects, including cross-cluster selectors (agent --policy-from-kubernetes; off by default: the cluster's CNI may enforce them already)")
	f.BoolVar(&o.Slices, "slices", false, "also print 'clustermesh slices' (remote backends as EndpointSlices, and the MCS API controller: ServiceImports, ClusterSetIPs) as a Deployment with its RBAC, and the MCS API's CRDs")
	f.StringVar(&o.ClusterSetIPRange, "clusterset-ip-range", "", "with --slices: the CIDR ClusterSetIPs are allocated from (empty: Kubernetes allocates them)")
	cmd.MarkFlagRequired("cluster-name")
	cmd.MarkFlagRequired("cluster-id")
	return cmd
}
