package kubemesh

import (
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// SlicesName names the objects of 'clustermesh slices' (ServiceAccount,
// Deployment, Lease roles).
const SlicesName = "clustermesh-slices"

// slicesObjects run 'clustermesh slices' — the EndpointSlice writer of
// remote backends and the MCS API controller — in c: the MCS API's CRDs, a
// ServiceAccount, a ClusterRole and its binding (read what the Kubernetes
// source reads; write EndpointSlices, derived Services, ServiceImports and
// the ServiceExports' conditions, and the ClusterSetIP range's
// ServiceCIDR), a Role and its binding (the writers' Leases) and a
// Deployment of two replicas (one writes) reading the remotes secret.
func slicesObjects(c meshCluster, clusterSetIPRange string) ([]runtime.Object, error) {
	crds, err := mcsCRDObjects()
	if err != nil {
		return nil, err
	}
	return append(crds, slicesWriterObjects(c, clusterSetIPRange)...), nil
}

// slicesWriterObjects are slicesObjects but for the CRDs, in the order they
// are applied (Disable deletes them in reverse).
func slicesWriterObjects(c meshCluster, clusterSetIPRange string) []runtime.Object {
	role := SlicesName + "-" + c.Namespace
	read := []string{"get", "list", "watch"}
	write := []string{"get", "list", "watch", "create", "update", "delete"}
	return []runtime.Object{
		&corev1.ServiceAccount{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"}, ObjectMeta: meta(SlicesName, c.Namespace)},
		&rbacv1.ClusterRole{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
			ObjectMeta: meta(role, ""),
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"pods", "namespaces", "nodes"}, Verbs: read},
				// Services: read all, write the derived ones (k8smcs).
				{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: write},
				{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: write},
				{APIGroups: []string{mcsGroup}, Resources: []string{"serviceexports"}, Verbs: read},
				{APIGroups: []string{mcsGroup}, Resources: []string{"serviceimports"}, Verbs: write},
				{APIGroups: []string{mcsGroup}, Resources: []string{"serviceexports/status", "serviceimports/status"}, Verbs: []string{"update"}},
				{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"servicecidrs"}, Verbs: []string{"create"}},
			},
		},
		clusterRoleBinding(role, SlicesName, c.Namespace),
		&rbacv1.Role{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
			ObjectMeta: meta(SlicesName, c.Namespace),
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update"}},
			},
		},
		roleBinding(SlicesName, c.Namespace),
		slicesDeployment(c, clusterSetIPRange),
	}
}

func slicesDeployment(c meshCluster, clusterSetIPRange string) *appsv1.Deployment {
	two, optional := int32(2), true
	args := []string{"clustermesh", "slices", "--cluster-name=" + c.Name,
		"--cluster-id=" + strconv.FormatUint(uint64(c.ID), 10),
		"--config-dir=/var/lib/clustermesh/remotes", "--namespace=" + c.Namespace,
		"--status-addr=/var/run/clustermesh/slices.sock", "--metrics-addr=:9964"}
	if clusterSetIPRange != "" {
		args = append(args, "--clusterset-ip-range="+clusterSetIPRange)
	}
	labels := map[string]string{"app.kubernetes.io/part-of": "clustermesh", "app.kubernetes.io/name": SlicesName}
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: meta(SlicesName, c.Namespace),
		Spec: appsv1.DeploymentSpec{
			Replicas: &two,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": SlicesName}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: SlicesName,
					Containers: []corev1.Container{{
						Name:  "slices",
						Image: c.Image,
						Args:  args,
						Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9964}},
						VolumeMounts: []corev1.VolumeMount{
							{Name: "remotes", MountPath: "/var/lib/clustermesh/remotes", ReadOnly: true},
							{Name: "run", MountPath: "/var/run/clustermesh"},
						},
					}},
					Volumes: []corev1.Volume{
						{Name: "remotes", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: RemotesSecretName, Optional: &optional}}},
						{Name: "run", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
					},
				},
			},
		},
	}
}
