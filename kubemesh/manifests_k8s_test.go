package kubemesh

import (
	"context"
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/kubetest"
)

// The agent manifests are valid objects for a real API server, and run the
// agent as its service account; an invalid cluster is refused.
func TestK8sAgentManifests(t *testing.T) {
	if _, err := AgentManifests(ManifestsOptions{ClusterName: "east"}); err == nil {
		t.Error("cluster id 0 accepted")
	}
	objs, err := AgentManifests(ManifestsOptions{ClusterName: "east", ClusterID: 1})
	if err != nil {
		t.Fatal(err)
	}
	env := kubetest.Start(t, "east")
	target, err := Open(env.Kubeconfig, "east")
	if err != nil {
		t.Fatal(err)
	}
	a, err := newApplier(target, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ns := DefaultNamespace
	if _, err := target.Client.CoreV1().Namespaces().Create(ctx, namespaceObject(ns), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, obj := range objs {
		if c, err := a.apply(ctx, obj); err != nil || c.Action != Created {
			t.Fatalf("the API server refused %T: %v %+v", obj, err, c)
		}
	}
	ds, err := target.Client.AppsV1().DaemonSets(ns).Get(ctx, AgentName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	args := ds.Spec.Template.Spec.Containers[0].Args
	if !slices.Contains(args, "--cluster-name=east") || ds.Spec.Template.Spec.ServiceAccountName != AgentName {
		t.Errorf("daemonset: args %v, service account %q", args, ds.Spec.Template.Spec.ServiceAccountName)
	}
	if _, err := target.Client.CoreV1().ServiceAccounts(ns).Get(ctx, AgentName, metav1.GetOptions{}); err != nil {
		t.Error(err)
	}

	// With the slices writer and MCS controller: the API server takes them
	// (the agent's objects again unchanged), the CRDs are served.
	objs, err = AgentManifests(ManifestsOptions{ClusterName: "east", ClusterID: 1, Slices: true, ClusterSetIPRange: "10.0.1.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range objs {
		if _, err := a.apply(ctx, obj); err != nil {
			t.Fatalf("the API server refused %T: %v", obj, err)
		}
	}
	d, err := target.Client.AppsV1().Deployments(ns).Get(ctx, SlicesName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if args := d.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--clusterset-ip-range=10.0.1.0/24") || d.Spec.Template.Spec.Volumes[0].Secret.SecretName != RemotesSecretName {
		t.Errorf("slices deployment: %+v", d.Spec.Template.Spec)
	}
	if _, err := target.Client.Discovery().ServerResourcesForGroupVersion("multicluster.x-k8s.io/v1beta1"); err != nil {
		t.Errorf("the MCS API is not served: %v", err)
	}
}
