package kubemesh

import (
	"fmt"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/clustermesh/clustermesh/wire"
)

// ManifestsOptions describe the cluster whose agent AgentManifests are for.
type ManifestsOptions struct {
	ClusterName  string
	ClusterID    uint32
	MaxConnected uint32 // the mesh size, 255 (the default) or 511
	Namespace    string // clustermesh runs in (default DefaultNamespace)
	Image        string // with the clustermesh binary (default DefaultImage)
	// EnforcePolicy: the agents enforce the cluster's NetworkPolicy and
	// CiliumNetworkPolicy objects (agent --policy-from-kubernetes).
	EnforcePolicy bool
	// Slices adds 'clustermesh slices' (the EndpointSlice writer and the MCS
	// API controller, a Deployment with its RBAC) and the MCS API's CRDs;
	// ClusterSetIPRange is its --clusterset-ip-range (empty: none).
	Slices            bool
	ClusterSetIPRange string
}

// AgentManifests are the objects that run the clustermesh agent on every
// node of a cluster, for kubectl apply or GitOps: a ServiceAccount, a
// ClusterRole and its binding (read Services, EndpointSlices, Pods,
// Namespaces, Nodes, and the policy objects), a Role and its binding
// (write the agent's status report, a Lease per node) and a privileged
// DaemonSet on the host network that reads the remote clusters from the
// secret RemotesSecretName.
func AgentManifests(o ManifestsOptions) ([]runtime.Object, error) {
	c := meshCluster{Namespace: orDefault(o.Namespace, DefaultNamespace), Name: o.ClusterName, ID: o.ClusterID,
		MaxConnected: orDefault(o.MaxConnected, wire.DefaultMaxConnectedClusters), Image: orDefault(o.Image, DefaultImage),
		EnforcePolicy: o.EnforcePolicy}
	cl := wire.Cluster{Name: c.Name, ID: c.ID, MaxConnectedClusters: c.MaxConnected}
	if err := cl.Validate(); err != nil {
		return nil, fmt.Errorf("checking the cluster of the agent manifests: %w", err)
	}
	objs := agentObjects(c)
	if o.Slices {
		more, err := slicesObjects(c, o.ClusterSetIPRange)
		if err != nil {
			return nil, err
		}
		objs = append(objs, more...)
	}
	return objs, nil
}

// agentObjects are the agent's ServiceAccount, ClusterRole, binding and
// DaemonSet.
func agentObjects(c meshCluster) []runtime.Object {
	role := AgentName + "-" + c.Namespace
	return []runtime.Object{
		&corev1.ServiceAccount{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"}, ObjectMeta: meta(AgentName, c.Namespace)},
		&rbacv1.ClusterRole{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
			ObjectMeta: meta(role, ""),
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"services", "pods", "namespaces", "nodes"}, Verbs: []string{"get", "list", "watch"}},
				{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
				// The cluster's policies (k8spolicy).
				{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: []string{"list", "watch"}},
				{APIGroups: []string{"cilium.io"}, Resources: []string{"ciliumnetworkpolicies"}, Verbs: []string{"list", "watch"}},
				// The MCS API's exports make services global (k8ssource).
				{APIGroups: []string{mcsGroup}, Resources: []string{"serviceexports"}, Verbs: []string{"get", "list", "watch"}},
			},
		},
		clusterRoleBinding(role, AgentName, c.Namespace),
		// The status reports: Leases (not ConfigMaps, which hold the
		// apiserver's configuration) in the namespace.
		&rbacv1.Role{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
			ObjectMeta: meta(AgentName, c.Namespace),
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update", "patch", "delete"}},
			},
		},
		roleBinding(AgentName, c.Namespace),
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
	labels := map[string]string{"app.kubernetes.io/part-of": "clustermesh", "app.kubernetes.io/name": AgentName}
	privileged := true
	hostPath := func(name, path string) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path}}}
	}
	return &appsv1.DaemonSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"},
		ObjectMeta: meta(AgentName, c.Namespace),
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: AgentName,
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
						{Name: "remotes", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: RemotesSecretName, Optional: &privileged}}},
						hostPath("bpffs", "/sys/fs/bpf"),
						hostPath("cgroup", "/sys/fs/cgroup"),
						hostPath("run", "/var/run/clustermesh"),
					},
				},
			},
		},
	}
}
