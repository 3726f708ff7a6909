package corednstest_test

import (
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// corednsRules are the rules of kubeadm's system:coredns ClusterRole, what
// CoreDNS's kubernetes plugin reads for cluster.local.
var corednsRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
	{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
}

// clustersetRules are the rules docs/dns.md adds for clusterset.local, in
// a ClusterRole of their own bound to CoreDNS's service account.
var clustersetRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"multicluster.x-k8s.io"}, Resources: []string{"serviceimports"}, Verbs: []string{"list", "watch"}},
}

// CoreDNS as a pod runs it, as its service account under RBAC: with only
// kubeadm's system:coredns rules it cannot list ServiceImports and answers
// SERVFAIL in clusterset.local; bound to the clusterset role of
// docs/dns.md as well, it answers, without a restart.
func TestK8sClustersetDNSRBAC(t *testing.T) {
	env := kubetest.StartWith(t, kubetest.Options{RBAC: true}, "east")
	c := env.Clusters[0]
	installMCSCRDs(t, c.Config)
	mcs := mcsclient.NewForConfigOrDie(c.Config).MulticlusterV1beta1()
	createImport(t, mcs, "web", mcsv1beta1.ClusterSetIP, []string{"242.255.0.10"}, "http", 80)
	if _, err := c.Client.CoreV1().ServiceAccounts("kube-system").Create(t.Context(),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "coredns"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bindClusterRole(t, c.Client, "system:coredns", corednsRules)
	kubeconfig, err := env.ServiceAccountKubeconfig("kube-system", "coredns")
	if err != nil {
		t.Fatal(err)
	}
	dns := startClusterset(t, kubeconfig, c.Name)
	const web = "web.default.svc.clusterset.local"
	expect(t, dns, web, dnsmessage.TypeA, "CoreDNS not allowed to list ServiceImports", servFail)
	testenv.WaitFor(t, wait, "CoreDNS logging that it may not list ServiceImports", func() bool {
		return forbidden(dns.Output()) != ""
	})
	t.Logf("CoreDNS says:\n%s", forbidden(dns.Output()))
	bindClusterRole(t, c.Client, "clustermesh:coredns-clusterset", clustersetRules)
	expect(t, dns, web, dnsmessage.TypeA, "CoreDNS bound to the clusterset role", values("242.255.0.10"))
}

// forbidden is CoreDNS's first line saying it may not list ServiceImports.
func forbidden(output string) string {
	for line := range strings.Lines(output) {
		if strings.Contains(line, "serviceimports") && strings.Contains(line, "forbidden") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// bindClusterRole creates the ClusterRole name with rules, bound to the
// service account kube-system/coredns.
func bindClusterRole(t *testing.T, client kubernetes.Interface, name string, rules []rbacv1.PolicyRule) {
	t.Helper()
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}
	if _, err := client.RbacV1().ClusterRoles().Create(t.Context(), role, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the ClusterRole %s: %v", name, err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "kube-system", Name: "coredns"}},
	}
	if _, err := client.RbacV1().ClusterRoleBindings().Create(t.Context(), binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the ClusterRoleBinding %s: %v", name, err)
	}
}
