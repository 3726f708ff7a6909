package cli

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// The apiserver as enable deploys it, under RBAC as its service account,
// keeps identity numbers in the configmap clustermesh-identities: restarted
// with a fresh data directory (a rescheduled pod), every identity keeps its
// number and a new one gets the next.
func TestK8sAPIServerIdentitiesSurviveRestart(t *testing.T) {
	env := kubetest.StartWith(t, kubetest.Options{RBAC: true}, "east")
	east := env.Cluster("east")
	ctx := context.Background()
	ns := defaultKubeNamespace
	kubeRun(t, env, "enable", "--context", "east", "--cluster-name", "east", "--cluster-id", "1")
	if _, err := east.CreateNode(ctx, kubetest.Node{Name: "e1", InternalIP: "192.168.1.1", PodCIDRs: []string{"10.1.1.0/24"}}); err != nil {
		t.Fatal(err)
	}
	if err := east.CreateNamespace(ctx, "shop", nil); err != nil {
		t.Fatal(err)
	}
	for i, app := range []string{"cart", "checkout"} {
		if _, err := east.CreatePod(ctx, kubetest.Pod{Namespace: "shop", Name: app, Node: "e1", IP: "10.1.1." + string(rune('1'+i)), Labels: map[string]string{"app": app}}); err != nil {
			t.Fatal(err)
		}
	}

	listen := freePort(t) // 127.0.0.1, which the server certificate names
	first := startAPIServer(t, env, east, listen)
	var before map[string]string
	testenv.WaitFor(t, 10*time.Second, "two identities published", func() bool {
		before = first.identities(t)
		return len(before) == 2
	})
	first.stop(t)
	cm, err := east.Client.CoreV1().ConfigMaps(ns).Get(ctx, identitiesConfigMap, metav1.GetOptions{})
	if err != nil || !strings.Contains(cm.Data["identities.json"], "k8s:app=checkout") {
		t.Fatalf("configmap %s: %v %v", identitiesConfigMap, cm.Data, err)
	}

	// A new pod while the apiserver is away, then the rescheduled apiserver:
	// a fresh data directory, no state directory.
	if _, err := east.CreatePod(ctx, kubetest.Pod{Namespace: "shop", Name: "ads", Node: "e1", IP: "10.1.1.9", Labels: map[string]string{"app": "ads"}}); err != nil {
		t.Fatal(err)
	}
	second := startAPIServer(t, env, east, listen)
	var after map[string]string
	testenv.WaitFor(t, 10*time.Second, "three identities published", func() bool {
		after = second.identities(t)
		return len(after) == 3
	})
	kept := maps.Clone(after)
	maps.DeleteFunc(kept, func(labels, _ string) bool { return strings.Contains(labels, "app=ads") })
	if !maps.Equal(before, kept) {
		t.Errorf("identities changed across a restart:\nbefore %v\nafter  %v", before, after)
	}
	for labels, id := range after {
		if strings.Contains(labels, "app=ads") && id != "65538" {
			t.Errorf("new identity %s: %s, want the next number 65538", labels, id)
		}
	}

	// Without the role, the apiserver says what is missing.
	if err := east.Client.RbacV1().RoleBindings(ns).Delete(ctx, apiserverName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	second.stop(t)
	kubeconfig, err := env.ServiceAccountKubeconfig(ns, apiserverName)
	if err != nil {
		t.Fatal(err)
	}
	out, err := run(ctx, "apiserver", "--cluster-name", "east", "--cluster-id", "1", "--cert-dir", second.certs,
		"--state-source", "kubernetes", "--kubeconfig", kubeconfig, "--context", "east", "--namespace", ns,
		"--listen", listen, "--metrics-addr", "")
	if err == nil || !strings.Contains(err.Error(), "forbidden") || !strings.Contains(err.Error(), "clustermesh enable again") {
		t.Errorf("apiserver without its role: %v\n%s", err, out)
	}
}
