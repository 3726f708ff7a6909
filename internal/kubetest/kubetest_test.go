package kubetest

import (
	"context"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Two clusters share one etcd but nothing else, and the kubeconfig reaches
// each through its context; with RBAC, a service account's kubeconfig may
// do only what its roles allow.
func TestK8sTwoClusters(t *testing.T) {
	start := time.Now()
	env := StartWith(t, Options{RBAC: true}, "east", "west")
	t.Logf("two kube-apiservers ready in %s", time.Since(start).Round(time.Millisecond))
	ctx := context.Background()

	east, west := env.Cluster("east"), env.Cluster("west")
	if err := east.CreateNamespace(ctx, "only-east", nil); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"east", "west"} {
		cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: env.Kubeconfig},
			&clientcmd.ConfigOverrides{CurrentContext: name}).ClientConfig()
		if err != nil {
			t.Fatal(err)
		}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		_, err = cs.CoreV1().Namespaces().Get(ctx, "only-east", metav1.GetOptions{})
		if got, want := err == nil, name == "east"; got != want {
			t.Errorf("context %s: namespace only-east found=%v (err %v), want %v", name, got, err, want)
		}
	}
	sa, err := env.ServiceAccountKubeconfig("default", "reader")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: sa}, &clientcmd.ConfigOverrides{CurrentContext: "east"}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Secrets("default").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("a service account without roles lists secrets: %v, want forbidden", err)
	}
	if _, err := west.CreateNode(ctx, Node{Name: "w1", InternalIP: "192.0.2.1", PodCIDRs: []string{"10.2.1.0/24"}}); err != nil {
		t.Fatal(err)
	}
	n, err := west.Client.CoreV1().Nodes().Get(ctx, "w1", metav1.GetOptions{})
	if err != nil || len(n.Status.Addresses) != 1 || n.Spec.PodCIDRs[0] != "10.2.1.0/24" {
		t.Fatalf("node w1: %+v, %v", n, err)
	}
}
