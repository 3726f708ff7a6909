package cli

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/kubetest"
)

// The agent manifests are valid objects for a real API server, and say what
// the agent needs: the Kubernetes source, the remotes secret, bpffs, the
// node's cgroup, privileges.
func TestK8sManifests(t *testing.T) {
	out, err := run(context.Background(), "manifests", "--cluster-name", "east", "--cluster-id", "1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kind: DaemonSet", "kind: ClusterRole", "--state-source=kubernetes", "--cluster-id=1",
		"secretName: " + remotesSecretName, "path: /sys/fs/bpf", "privileged: true", "hostNetwork: true"} {
		if !strings.Contains(out, want) {
			t.Errorf("manifests lack %q", want)
		}
	}
	if strings.Contains(out, "--policy-from-kubernetes") {
		t.Error("the agents enforce the cluster's policies without --enforce-policy")
	}
	if out, err := run(context.Background(), "manifests", "--cluster-name", "east", "--cluster-id", "1", "--enforce-policy"); err != nil ||
		!strings.Contains(out, "--policy-from-kubernetes") || !strings.Contains(out, "networkpolicies") {
		t.Errorf("manifests --enforce-policy: %v, want the agent's --policy-from-kubernetes and its RBAC", err)
	}
	if _, err := run(context.Background(), "manifests", "--cluster-name", "east", "--cluster-id", "0"); err == nil {
		t.Error("cluster id 0 accepted")
	}

	env := kubetest.Start(t, "east")
	target, err := (&kubeFlags{kubeconfig: env.Kubeconfig}).target("east")
	if err != nil {
		t.Fatal(err)
	}
	a, err := newApplier(target, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := meshCluster{Namespace: defaultKubeNamespace, Name: "east", ID: 1, MaxConnected: 255, Image: defaultImage}
	if _, err := target.Client.CoreV1().Namespaces().Create(ctx, namespaceObject(c.Namespace), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, obj := range agentObjects(c) {
		if err := a.apply(ctx, obj); err != nil {
			t.Fatalf("the API server refused %T: %v", obj, err)
		}
	}
	ds, err := target.Client.AppsV1().DaemonSets(c.Namespace).Get(ctx, agentName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	args := ds.Spec.Template.Spec.Containers[0].Args
	if !slices.Contains(args, "--cluster-name=east") || ds.Spec.Template.Spec.ServiceAccountName != agentName {
		t.Errorf("daemonset: args %v, service account %q", args, ds.Spec.Template.Spec.ServiceAccountName)
	}
	if _, err := target.Client.CoreV1().ServiceAccounts(c.Namespace).Get(ctx, agentName, metav1.GetOptions{}); err != nil {
		t.Error(err)
	}
}
