package k8spolicy_test

import (
	"context"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8spolicy"
	"github.com/clustermesh/clustermesh/policy"
)

// agentRules are the RBAC rules the agent needs for its policies (the
// manifests' ClusterRole must hold them).
var agentRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{"cilium.io"}, Resources: []string{"ciliumnetworkpolicies"}, Verbs: []string{"list", "watch"}},
}

// TestRBAC: with only agentRules, as a service account, the watcher sees
// both kinds (discovery needs nothing more).
func TestRBAC(t *testing.T) {
	env := kubetest.StartWith(t, kubetest.Options{RBAC: true}, "east")
	cl := env.Clusters[0]
	ctx := context.Background()
	for _, ns := range []string{"shop", "kube-system"} {
		if err := cl.CreateNamespace(ctx, ns, nil); err != nil {
			t.Fatal(err)
		}
	}
	admin, err := dynamic.NewForConfig(cl.Config)
	if err != nil {
		t.Fatal(err)
	}
	installCNPCRD(t, admin)
	rbac := cl.Client.RbacV1()
	if _, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "policy-reader"}, Rules: agentRules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "policy-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "policy-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "agent", Namespace: "kube-system"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "the CRD served", func() bool {
		_, err := admin.Resource(k8spolicy.CiliumNetworkPolicies).Namespace("shop").Create(ctx, cnp("from-west", fromWest), metav1.CreateOptions{})
		return err == nil
	})
	if _, err := cl.Client.NetworkingV1().NetworkPolicies("shop").Create(ctx, networkPolicy("db", "db", "checkout", 5432), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	path, err := env.ServiceAccountKubeconfig("kube-system", "agent")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w, r := run(t, k8spolicy.Config{Client: cs, Dynamic: dyn})
	r.delivered(t, "the first delivery", func(*policy.Compiled) bool { return true })
	if n, c := r.get(); n != 1 || c.Rules() != 2 || !w.Status().CiliumNetworkPolicies {
		t.Fatalf("as the agent: %d calls, %d rules, status %+v: want both objects in the first delivery", n, c.Rules(), w.Status())
	}
}
