package kubemesh

import (
	"context"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/k8sslices"
)

// enable --endpoint-slices deploys 'clustermesh slices' (its RBAC and a
// Deployment mounting the remotes secret) beside the apiserver; a second
// run changes nothing and a run without the flag leaves it; disable
// removes it and the slices it wrote, and no other slice.
func TestK8sEnableEndpointSlices(t *testing.T) {
	env := kubetest.Start(t, "east")
	east := env.Cluster("east")
	ctx := context.Background()
	o := EnableOptions{Kubeconfig: env.Kubeconfig, Context: "east", ClusterName: "east", ClusterID: 1,
		EndpointSlices: true, ClusterSetIPRange: "10.96.128.0/20"}

	if _, err := Enable(ctx, EnableOptions{Kubeconfig: env.Kubeconfig, Context: "east", ClusterName: "east", ClusterID: 1,
		ClusterSetIPRange: "10.96.128.0/20"}); err == nil || !strings.Contains(err.Error(), "--endpoint-slices") {
		t.Errorf("--clusterset-ip-range without --endpoint-slices: %v", err)
	}
	res, err := Enable(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	writer := []string{"serviceaccount/" + SlicesName, "clusterrole/" + SlicesName + "-" + DefaultNamespace,
		"clusterrolebinding/" + SlicesName + "-" + DefaultNamespace, "role/" + SlicesName, "rolebinding/" + SlicesName,
		"deployment/" + SlicesName}
	for _, w := range writer {
		kind, name, _ := strings.Cut(w, "/")
		if !has(res.Objects, kind, name, Created) {
			t.Errorf("enable --endpoint-slices: %s not created:\n%+v", w, res.Objects)
		}
	}
	if got := count(res.Objects, Created); got != 15+len(writer) {
		t.Errorf("enable --endpoint-slices: %d created, want %d", got, 15+len(writer))
	}
	checkSlicesDeployment(t, east)

	if res, err := Enable(ctx, o); err != nil || count(res.Objects, Unchanged) != 15+len(writer) {
		t.Errorf("enable --endpoint-slices again: %v, %d unchanged:\n%+v", err, count(res.Objects, Unchanged), res.Objects)
	}
	o.EndpointSlices, o.ClusterSetIPRange = false, ""
	if _, err := Enable(ctx, o); err != nil {
		t.Fatal(err)
	}
	if _, err := east.Client.AppsV1().Deployments(DefaultNamespace).Get(ctx, SlicesName, metav1.GetOptions{}); err != nil {
		t.Errorf("enable without --endpoint-slices removed the writer: %v", err)
	}

	// The writer's slice, and the cluster's own.
	mine, theirs := createSlices(t, east)
	res2, err := Disable(ctx, DisableOptions{Kubeconfig: env.Kubeconfig, Context: "east"})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range append(writer, "endpointslice/"+mine) {
		kind, name, _ := strings.Cut(w, "/")
		if !has(res2.Objects, kind, name, Deleted) {
			t.Errorf("disable: %s not deleted:\n%+v", w, res2.Objects)
		}
	}
	if i := slices.IndexFunc(res2.Objects, func(c ObjectChange) bool { return c.Name == APIServerName && c.Kind == "deployment" }); i < len(writer) {
		t.Errorf("disable deleted the apiserver before the writer: %+v", res2.Objects)
	}
	sl := east.Client.DiscoveryV1().EndpointSlices("default")
	if _, err := sl.Get(ctx, mine, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the writer's slice after disable: %v, want not found", err)
	}
	if _, err := sl.Get(ctx, theirs, metav1.GetOptions{}); err != nil {
		t.Errorf("the cluster's own slice after disable: %v", err)
	}
}

// checkSlicesDeployment: the writer runs as its service account with the
// cluster's name, id and range, and mounts the remotes secret.
func checkSlicesDeployment(t *testing.T, c *kubetest.Cluster) {
	t.Helper()
	d, err := c.Client.AppsV1().Deployments(DefaultNamespace).Get(context.Background(), SlicesName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := d.Spec.Template.Spec
	args := strings.Join(pod.Containers[0].Args, " ")
	for _, want := range []string{"clustermesh slices", "--cluster-name=east", "--cluster-id=1", "--namespace=" + DefaultNamespace,
		"--config-dir=/var/lib/clustermesh/remotes", "--clusterset-ip-range=10.96.128.0/20"} {
		if !strings.Contains(args, want) {
			t.Errorf("writer args %q lack %q", args, want)
		}
	}
	if pod.ServiceAccountName != SlicesName || *d.Spec.Replicas != 2 ||
		!slices.ContainsFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Secret != nil && v.Secret.SecretName == RemotesSecretName }) {
		t.Errorf("writer deployment: account %q, %d replicas, volumes %+v", pod.ServiceAccountName, *d.Spec.Replicas, pod.Volumes)
	}
}

// createSlices creates a slice as the writer labels its own and one as
// the cluster's endpoint slice controller would, and returns their names.
func createSlices(t *testing.T, c *kubetest.Cluster) (mine, theirs string) {
	t.Helper()
	port, proto := int32(80), corev1.ProtocolTCP
	for _, s := range []struct{ name, managedBy string }{{"web-west-1", k8sslices.ManagedBy}, {"web-abc", "endpointslice-controller.k8s.io"}} {
		_, err := c.Client.DiscoveryV1().EndpointSlices("default").Create(context.Background(), &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: s.name, Labels: map[string]string{
				discoveryv1.LabelServiceName: "web", discoveryv1.LabelManagedBy: s.managedBy}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.2.0.1"}}},
			Ports:       []discoveryv1.EndpointPort{{Port: &port, Protocol: &proto}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	return "web-west-1", "web-abc"
}
