package k8smcs_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/clustermesh/clustermesh/internal/corednstest"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8smcs"
	"github.com/clustermesh/clustermesh/k8ssource"
	"github.com/clustermesh/clustermesh/statesource"
)

const bound = 20 * time.Second

// One cluster's controller on a real kube-apiserver, its local state from
// the real Kubernetes source, no remotes: an exported ClusterSetIP service
// becomes a ServiceImport of the cluster alone, with an address of the
// range (through a ServiceCIDR) that real CoreDNS answers for
// checkout.shop.svc.clusterset.local; a headless one an import without
// ips; an export without a Service is not valid; unexporting removes the
// import, its derived Service, and the name (NXDOMAIN).
func TestK8sControllerLocalExports(t *testing.T) {
	env := kubetest.Start(t, "east")
	c := env.Clusters[0]
	ctx := context.Background()
	if err := k8smcs.InstallCRDs(ctx, c.Client); err != nil {
		t.Fatal(err)
	}
	mc, err := mcsclient.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	dns := corednstest.Start(t, []string{"."}, fmt.Sprintf(`kubernetes cluster.local clusterset.local {
    kubeconfig %s %s
    multicluster clusterset.local
    ttl 5
}`, env.Kubeconfig, c.Name))
	if err := c.CreateNamespace(ctx, "shop", nil); err != nil {
		t.Fatal(err)
	}
	service(t, c, "checkout", "")
	service(t, c, "db", corev1.ClusterIPNone)
	for _, name := range []string{"checkout", "db", "ghost"} {
		if _, err := mc.MulticlusterV1beta1().ServiceExports("shop").Create(ctx, &mcsv1beta1.ServiceExport{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
			Spec:       mcsv1beta1.ServiceExportSpec{ExportedLabels: map[string]string{"team": "shop"}, ExportedAnnotations: map[string]string{"note": name}}},
			metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ctl := runController(t, c, mc)

	rng := netip.MustParsePrefix("10.0.1.0/24")
	var ip string
	testenv.WaitFor(t, bound, "the ServiceImport of checkout with a ClusterSetIP of the range", func() bool {
		si, err := mc.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "checkout", metav1.GetOptions{})
		if err != nil || len(si.Spec.IPs) != 1 || len(si.Status.Clusters) != 1 || si.Status.Clusters[0].Cluster != "east" ||
			si.Labels["team"] != "shop" || si.Annotations["note"] != "checkout" || si.Labels[k8smcs.LabelManagedBy] != k8smcs.ManagedBy {
			return false
		}
		ip = si.Spec.IPs[0]
		return rng.Contains(netip.MustParseAddr(ip))
	})
	testenv.WaitFor(t, bound, "the headless import of db and the export conditions", func() bool {
		si, err := mc.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "db", metav1.GetOptions{})
		return err == nil && si.Spec.Type == mcsv1beta1.Headless && len(si.Spec.IPs) == 0 &&
			condition(mc, "checkout", "Valid") == "True/Valid" && condition(mc, "checkout", "Conflict") == "False/NoConflicts" &&
			condition(mc, "ghost", "Valid") == "False/NoService"
	})
	if _, err := mc.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "ghost", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("an export without a Service was imported: %v", err)
	}
	derived, err := c.Client.CoreV1().Services("shop").Get(ctx, k8smcs.DerivedName("shop", "checkout"), metav1.GetOptions{})
	if err != nil || derived.Spec.ClusterIP != ip || derived.Spec.Selector["app"] != "checkout" || derived.Spec.Ports[0].TargetPort.IntVal != 8080 ||
		derived.Labels[k8smcs.LabelServiceName] != "checkout" || derived.Annotations[k8smcs.AnnotationGlobal] != "true" {
		t.Fatalf("derived service: %v %+v", err, derived)
	}
	sc, err := c.Client.NetworkingV1().ServiceCIDRs().Get(ctx, k8smcs.ServiceCIDRName, metav1.GetOptions{})
	if err != nil || !slices.Equal(sc.Spec.CIDRs, []string{rng.String()}) {
		t.Errorf("ServiceCIDR: %v %+v", err, sc)
	}

	const name = "checkout.shop.svc.clusterset.local"
	testenv.WaitFor(t, bound, name+" answering the ClusterSetIP", func() bool {
		a, err := dns.Query(ctx, name, dnsmessage.TypeA)
		return err == nil && slices.Equal(a.Values, []string{ip})
	})
	a, _ := dns.Query(ctx, name, dnsmessage.TypeA)
	t.Logf("%s", a)
	if st := ctl.Status(); !st.Leader || len(st.Imports) != 2 || st.WriteErrors != 0 {
		t.Errorf("status %+v", st)
	}

	if err := mc.MulticlusterV1beta1().ServiceExports("shop").Delete(ctx, "checkout", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, bound, "checkout's import, derived Service and name gone", func() bool {
		_, err := mc.MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "checkout", metav1.GetOptions{})
		_, serr := c.Client.CoreV1().Services("shop").Get(ctx, k8smcs.DerivedName("shop", "checkout"), metav1.GetOptions{})
		a, qerr := dns.Query(ctx, name, dnsmessage.TypeA)
		return apierrors.IsNotFound(err) && apierrors.IsNotFound(serr) && qerr == nil && a.NXDomain()
	})
}

// service creates shop/name selecting app=name on port 80 (target 8080),
// with clusterIP ("None": headless).
func service(t *testing.T, c *kubetest.Cluster, name, clusterIP string) {
	t.Helper()
	if _, err := c.Client.CoreV1().Services("shop").Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
		Spec: corev1.ServiceSpec{ClusterIP: clusterIP, Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// runController runs the Kubernetes source and a controller fed by it
// (remotes: none) until t ends.
func runController(t *testing.T, c *kubetest.Cluster, mc mcsclient.Interface) *k8smcs.Controller {
	t.Helper()
	ctl, err := k8smcs.New(k8smcs.Config{ClusterName: "east", Client: c.Client, MCS: mc, ConfigDir: t.TempDir(),
		ClusterSetIPRange: netip.MustParsePrefix("10.0.1.0/24"), LeaseNamespace: "default", Identity: "mcs-1",
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 100 * time.Millisecond, Coalesce: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	src := ctl.Tee(&k8ssource.Source{Client: c.Client, MCS: mc, Coalesce: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Add(2)
	go func() { defer wg.Done(); errs <- src.Run(ctx, func(*statesource.State) {}) }()
	go func() { defer wg.Done(); errs <- ctl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("run: %v", err)
			}
		}
	})
	return ctl
}

// condition is "status/reason" of the condition typ of shop/name's
// ServiceExport.
func condition(mc mcsclient.Interface, name, typ string) string {
	e, err := mc.MulticlusterV1beta1().ServiceExports("shop").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return ""
	}
	for _, c := range e.Status.Conditions {
		if c.Type == typ {
			return string(c.Status) + "/" + c.Reason
		}
	}
	return ""
}
