package kubemesh

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8smcs"
	"github.com/clustermesh/clustermesh/k8ssource"
	"github.com/clustermesh/clustermesh/statesource"
)

// The RBAC of 'manifests --slices' lets its service account do what the
// MCS controller and the Kubernetes source do, on a kube-apiserver
// enforcing RBAC: read the exports, create the ServiceCIDR, the
// ServiceImport and its derived Service, set the export's conditions, hold
// the Lease, and delete the import on unexport.
func TestK8sSlicesManifestsRBAC(t *testing.T) {
	env := kubetest.StartWith(t, kubetest.Options{RBAC: true}, "east")
	admin := env.Clusters[0]
	ctx := context.Background()
	target, err := Open(env.Kubeconfig, "east")
	if err != nil {
		t.Fatal(err)
	}
	a, err := newApplier(target, "")
	if err != nil {
		t.Fatal(err)
	}
	ns := DefaultNamespace
	for _, name := range []string{ns, "shop"} {
		if err := admin.CreateNamespace(ctx, name, nil); err != nil {
			t.Fatal(err)
		}
	}
	objs, err := AgentManifests(ManifestsOptions{ClusterName: "east", ClusterID: 1, Slices: true, ClusterSetIPRange: "10.0.1.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range objs {
		if _, err := a.apply(ctx, obj); err != nil {
			t.Fatalf("applying %T: %v", obj, err)
		}
	}
	if err := k8smcs.InstallCRDs(ctx, admin.Client); err != nil { // waits until served
		t.Fatal(err)
	}
	kc, err := env.ServiceAccountKubeconfig(ns, SlicesName)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(&clientcmd.ClientConfigLoadingRules{ExplicitPath: kc},
		&clientcmd.ConfigOverrides{CurrentContext: "east"}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	sa, saMCS := kubernetes.NewForConfigOrDie(cfg), mcsclient.NewForConfigOrDie(cfg)
	if _, err := sa.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("the service account lists secrets (RBAC not enforced?): %v", err)
	}
	adminMCS := mcsclient.NewForConfigOrDie(admin.Config)
	if _, err := admin.Client.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "checkout"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "checkout"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := adminMCS.MulticlusterV1beta1().ServiceExports("shop").Create(ctx, &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Name: "checkout"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	ctl, err := k8smcs.New(k8smcs.Config{ClusterName: "east", Client: sa, MCS: saMCS, ConfigDir: t.TempDir(),
		ClusterSetIPRange: netip.MustParsePrefix("10.0.1.0/24"), LeaseNamespace: ns, Identity: "pod-a",
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 100 * time.Millisecond, Coalesce: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	src := ctl.Tee(&k8ssource.Source{Client: sa, MCS: saMCS, Coalesce: 20 * time.Millisecond})
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Add(2)
	go func() { defer wg.Done(); errs <- src.Run(rctx, func(*statesource.State) {}) }()
	go func() { defer wg.Done(); errs <- ctl.Run(rctx) }()
	defer func() {
		cancel()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("run: %v", err)
			}
		}
	}()

	testenv.WaitFor(t, 20*time.Second, "the import, written as the service account", func() bool {
		si, err := adminMCS.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "checkout", metav1.GetOptions{})
		if err != nil || len(si.Spec.IPs) != 1 || len(si.Status.Clusters) != 1 {
			return false
		}
		e, err := adminMCS.MulticlusterV1beta1().ServiceExports("shop").Get(ctx, "checkout", metav1.GetOptions{})
		return err == nil && len(e.Status.Conditions) == 2
	})
	if err := adminMCS.MulticlusterV1beta1().ServiceExports("shop").Delete(ctx, "checkout", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 20*time.Second, "the import deleted", func() bool {
		_, err := adminMCS.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "checkout", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	if st := ctl.Status(); !st.Leader || st.WriteErrors != 0 {
		t.Errorf("status %+v", st)
	}
}
