package k8sslices_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8sslices"
	"github.com/clustermesh/clustermesh/k8ssource"
	"github.com/clustermesh/clustermesh/statesource"
)

// The manifests of docs/endpointslices.md are valid, and their service
// account may do what the command does: the writer creates, updates and
// deletes slices and holds the Lease, the Kubernetes source reads the
// cluster, on a kube-apiserver enforcing RBAC.
func TestK8sSlicesDocManifests(t *testing.T) {
	env := kubetest.StartWith(t, kubetest.Options{RBAC: true}, "east")
	admin := env.Clusters[0].Client
	ctx := context.Background()
	const ns = "clustermesh-system"
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, obj := range docManifests(t) {
		createObject(t, admin, obj)
	}
	kc, err := env.ServiceAccountKubeconfig(ns, "clustermesh-slices")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(&clientcmd.ClientConfigLoadingRules{ExplicitPath: kc},
		&clientcmd.ConfigOverrides{CurrentContext: "east"}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	sa := kubernetes.NewForConfigOrDie(cfg)
	if _, err := sa.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the service account lists secrets (RBAC not enforced?): %v", err)
	}

	createService(t, admin, "web", globalSync())
	src := newSource()
	src.set("default", "web", "west", 80, "10.2.0.1")
	w, _ := run(t, sa, src, "pod-a", func(c *k8sslices.Config) { c.LeaseNamespace = ns })
	testenv.WaitFor(t, wait, "west's slice, written as the service account", func() bool { return len(owned(t, admin, "web")) == 1 })
	src.set("default", "web", "west", 80, "10.2.0.2")
	testenv.WaitFor(t, wait, "the slice updated", func() bool {
		return slices.Equal(addresses(owned(t, admin, "web"), "west"), []string{"10.2.0.2"})
	})
	src.set("default", "web", "west", 80)
	testenv.WaitFor(t, wait, "the slice deleted", func() bool { return len(owned(t, admin, "web")) == 0 })
	if st := w.Status(); !st.Leader || st.WriteErrors != 0 {
		t.Errorf("status %+v", st)
	}

	got := make(chan *statesource.State, 1)
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- (&k8ssource.Source{Client: sa}).Run(sctx, func(st *statesource.State) {
			select {
			case got <- st:
			default:
			}
		})
	}()
	st := <-got
	cancel()
	if err := <-done; err != nil {
		t.Errorf("the Kubernetes source as the service account: %v", err)
	}
	if len(st.Services) == 0 {
		t.Errorf("the Kubernetes source read no service: %+v", st)
	}
}

// docManifests are the objects of the YAML block after the marker
// slices-manifests in docs/endpointslices.md.
func docManifests(t *testing.T) []runtime.Object {
	t.Helper()
	doc, err := os.ReadFile("../docs/endpointslices.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(doc), "<!-- slices-manifests -->\n```yaml\n")
	if !ok {
		t.Fatal("docs/endpointslices.md: no slices-manifests YAML block")
	}
	block, _, _ = strings.Cut(block, "```")
	var out []runtime.Object
	for _, part := range strings.Split(block, "\n---\n") {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(part), nil, nil)
		if err != nil {
			t.Fatalf("docs/endpointslices.md: %v in\n%s", err, part)
		}
		out = append(out, obj)
	}
	if len(out) != 6 {
		t.Errorf("%d manifests, want 6", len(out))
	}
	return out
}

func createObject(t *testing.T, c kubernetes.Interface, obj runtime.Object) {
	t.Helper()
	ctx, o := context.Background(), metav1.CreateOptions{}
	var err error
	switch x := obj.(type) {
	case *corev1.ServiceAccount:
		_, err = c.CoreV1().ServiceAccounts(x.Namespace).Create(ctx, x, o)
	case *rbacv1.ClusterRole:
		_, err = c.RbacV1().ClusterRoles().Create(ctx, x, o)
	case *rbacv1.ClusterRoleBinding:
		_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, x, o)
	case *rbacv1.Role:
		_, err = c.RbacV1().Roles(x.Namespace).Create(ctx, x, o)
	case *rbacv1.RoleBinding:
		_, err = c.RbacV1().RoleBindings(x.Namespace).Create(ctx, x, o)
	case *appsv1.Deployment:
		_, err = c.AppsV1().Deployments(x.Namespace).Create(ctx, x, o)
	default:
		t.Fatalf("unexpected manifest %T", obj)
	}
	if err != nil {
		t.Fatal(err)
	}
}
