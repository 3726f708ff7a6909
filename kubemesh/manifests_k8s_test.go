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
}
