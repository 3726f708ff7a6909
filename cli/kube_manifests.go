package cli

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/clustermesh/clustermesh/wire"
)

// agentName names the agent's DaemonSet, ServiceAccount and ClusterRole.
const agentName = "clustermesh-agent"

func newManifestsCmd() *cobra.Command {
	c := meshCluster{Namespace: defaultKubeNamespace, MaxConnected: wire.DefaultMaxConnectedClusters, Image: defaultImage}
	cmd := &cobra.Command{
		Use:   "manifests --cluster-name NAME --cluster-id ID",
		Short: "Print the agent's DaemonSet and RBAC as YAML (for kubectl apply or GitOps)",
		Long: `Print the manifests that run the clustermesh agent on every node of a cluster: a
ServiceAccount, a ClusterRole and its binding (read Services, EndpointSlices,
Pods, Namespaces, Nodes), a Role and its binding (write the agent's status
report: a Lease per node, clustermesh-agent-<node>, that 'clustermesh status
--context' reads), and a DaemonSet. The agent runs privileged on the host
network, reads the local cluster from the Kubernetes API, the remote clusters
from the secret clustermesh-remotes that 'clustermesh connect' writes, pins its
eBPF maps under /sys/fs/bpf/clustermesh and attaches its socket load balancer to
the node's cgroup v2 root.

  clustermesh manifests --cluster-name east --cluster-id 1 | kubectl apply -f -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl := wire.Cluster{Name: c.Name, ID: c.ID, MaxConnectedClusters: c.MaxConnected}
			if err := cl.Validate(); err != nil {
				return fmt.Errorf("manifests: %w", err)
			}
			return printYAML(cmd.OutOrStdout(), false, agentObjects(c)...)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Name, "cluster-name", "", "name of the cluster")
	f.Uint32Var(&c.ID, "cluster-id", 0, "id of the cluster")
	f.Uint32Var(&c.MaxConnected, "max-connected-clusters", c.MaxConnected, "mesh size: 255 or 511")
	f.StringVar(&c.Namespace, "namespace", c.Namespace, "namespace clustermesh runs in")
	f.StringVar(&c.Image, "image", c.Image, "container image with the clustermesh binary")
	f.BoolVar(&c.EnforcePolicy, "enforce-policy", false, "the agents enforce the cluster's NetworkPolicy and CiliumNetworkPolicy objects, including cross-cluster selectors (agent --policy-from-kubernetes; off by default: the cluster's CNI may enforce them already)")
	cmd.MarkFlagRequired("cluster-name")
	cmd.MarkFlagRequired("cluster-id")
	return cmd
}

// agentObjects are the agent's ServiceAccount, ClusterRole, binding and
// DaemonSet.
func agentObjects(c meshCluster) []runtime.Object {
	role := agentName + "-" + c.Namespace
	return []runtime.Object{
		&corev1.ServiceAccount{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"}, ObjectMeta: meta(agentName, c.Namespace)},
		&rbacv1.ClusterRole{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
			ObjectMeta: meta(role, ""),
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"services", "pods", "namespaces", "nodes"}, Verbs: []string{"get", "list", "watch"}},
				{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
				// The cluster's policies (k8spolicy).
				{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: []string{"list", "watch"}},
				{APIGroups: []string{"cilium.io"}, Resources: []string{"ciliumnetworkpolicies"}, Verbs: []string{"list", "watch"}},
			},
		},
		&rbacv1.ClusterRoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
			ObjectMeta: meta(role, ""),
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: agentName, Namespace: c.Namespace}},
		},
		// The status reports: Leases (not ConfigMaps, which hold the
		// apiserver's configuration) in the namespace.
		&rbacv1.Role{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
			ObjectMeta: meta(agentName, c.Namespace),
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update", "patch", "delete"}},
			},
		},
		&rbacv1.RoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"},
			ObjectMeta: meta(agentName, c.Namespace),
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: agentName},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: agentName, Namespace: c.Namespace}},
		},
		agentDaemonSet(c),
	}
}

func agentDaemonSet(c meshCluster) *appsv1.DaemonSet {
	args := []string{"clustermesh", "agent", "--cluster-name=" + c.Name,
		"--cluster-id=" + strconv.FormatUint(uint64(c.ID), 10),
		"--max-connected-clusters=" + strconv.FormatUint(uint64(c.MaxConnected), 10),
		"--state-source=kubernetes", "--config-dir=/var/lib/clustermesh/remotes",
		"--bpf-pin-dir=/sys/fs/bpf/clustermesh", "--cgroup=/run/clustermesh/cgroupv2",
		"--status-addr=/var/run/clustermesh/agent.sock",
		// Scraped on the node's address (host network): the one place the
		// metrics leave localhost; SECURITY.md says what they expose.
		"--metrics-addr=:9962",
		"--node-name=$(NODE_NAME)"}
	if c.EnforcePolicy {
		args = append(args, "--policy-from-kubernetes")
	}
	labels := map[string]string{"app.kubernetes.io/part-of": "clustermesh", "app.kubernetes.io/name": agentName}
	privileged := true
	hostPath := func(name, path string) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path}}}
	}
	return &appsv1.DaemonSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"},
		ObjectMeta: meta(agentName, c.Namespace),
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: agentName,
					HostNetwork:        true,
					HostPID:            true, // the socket load balancer attaches to the node's cgroup root
					Tolerations:        []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					Containers: []corev1.Container{{
						Name:  "agent",
						Image: c.Image,
						Args:  args,
						Env: []corev1.EnvVar{{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{
							FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"},
						}}},
						SecurityContext: &corev1.SecurityContext{Privileged: &privileged},
						Ports:           []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9962}},
						VolumeMounts: []corev1.VolumeMount{
							{Name: "remotes", MountPath: "/var/lib/clustermesh/remotes", ReadOnly: true},
							{Name: "bpffs", MountPath: "/sys/fs/bpf"},
							{Name: "cgroup", MountPath: "/run/clustermesh/cgroupv2"},
							{Name: "run", MountPath: "/var/run/clustermesh"},
						},
					}},
					Volumes: []corev1.Volume{
						{Name: "remotes", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: remotesSecretName, Optional: &privileged}}},
						hostPath("bpffs", "/sys/fs/bpf"),
						hostPath("cgroup", "/sys/fs/cgroup"),
						hostPath("run", "/var/run/clustermesh"),
					},
				},
			},
		},
	}
}
