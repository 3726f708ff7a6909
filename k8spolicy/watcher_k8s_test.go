package k8spolicy_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	networkingclient "k8s.io/client-go/kubernetes/typed/networking/v1"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8spolicy"
	"github.com/clustermesh/clustermesh/policy"
	"github.com/clustermesh/clustermesh/wire"
)

const wait = 20 * time.Second

var opts = policy.Options{LocalCluster: "east", DefaultLocalCluster: true}

// Identities of the test: east is the local cluster.
const (
	eastCheckout uint32 = 1<<16 + 1
	eastFront    uint32 = 1<<16 + 2
	eastDB       uint32 = 1<<16 + 3
	westFront    uint32 = 2<<16 + 2
)

func ident(cluster string, app string) wire.Labels {
	return wire.NewLabels("k8s", map[string]string{"app": app}).
		With(wire.Label{Source: "k8s", Key: policy.NamespaceLabel, Value: "shop"}).
		With(wire.Label{Source: "k8s", Key: wire.ClusterLabel, Value: cluster})
}

// allows evaluates c for the test's identities: may peer reach endpoint on
// TCP port?
func allows(c *policy.Compiled, endpoint, peer uint32, port uint16) bool {
	e := policy.NewEngine("east")
	e.UpsertIdentity(eastCheckout, ident("east", "checkout"))
	e.UpsertIdentity(eastFront, ident("east", "frontend"))
	e.UpsertIdentity(eastDB, ident("east", "db"))
	e.UpsertIdentity(westFront, ident("west", "frontend"))
	e.SetPolicies(c)
	return e.Endpoint(endpoint).Allows(peer, policy.Ingress, policy.TCP, port)
}

// recorder keeps what the watcher delivers.
type recorder struct {
	mu    sync.Mutex
	calls int
	last  *policy.Compiled
}

func (r *recorder) onChange(c *policy.Compiled) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	r.last = c
}

func (r *recorder) get() (int, *policy.Compiled) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls, r.last
}

// delivered waits until the last delivery satisfies cond.
func (r *recorder) delivered(t *testing.T, what string, cond func(*policy.Compiled) bool) {
	t.Helper()
	testenv.WaitFor(t, wait, what, func() bool {
		n, c := r.get()
		return n > 0 && cond(c)
	})
}

// run starts a watcher and stops it when t ends.
func run(t *testing.T, cfg k8spolicy.Config) (*k8spolicy.Watcher, *recorder) {
	t.Helper()
	r := &recorder{}
	cfg.Options, cfg.OnChange = opts, r.onChange
	cfg.Coalesce, cfg.Recheck = 20*time.Millisecond, 100*time.Millisecond
	w, err := k8spolicy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return w, r
}

func invalid(w *k8spolicy.Watcher, kind, name string) *k8spolicy.ObjectError {
	for _, e := range w.Status().Invalid {
		if e.Kind == kind && e.Namespace == "shop" && e.Name == name {
			return &e
		}
	}
	return nil
}

// networkPolicy lets app=from reach app=to on port.
func networkPolicy(name, to, from string, port int32) *networkingv1.NetworkPolicy {
	p := intstr.FromInt32(port)
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": to}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": from}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &p}},
			}},
		},
	}
}

func counter(t *testing.T, c prometheus.Collector, name, kind string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			if labelValue(m, "kind") == kind {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no metric %s{kind=%q}", name, kind)
	return 0
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.Label {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// NetworkPolicies are delivered from the first delivery on: created,
// refused when the mesh does not enforce them (the last valid version
// stays), fixed and deleted.
func TestNetworkPolicies(t *testing.T) {
	env := kubetest.Start(t, "east")
	cl := env.Clusters[0]
	if err := cl.CreateNamespace(context.Background(), "shop", nil); err != nil {
		t.Fatal(err)
	}
	nps := cl.Client.NetworkingV1().NetworkPolicies("shop")
	w, r := checkFirstDelivery(t, cl, nps)
	np := createCheckoutPolicy(t, nps, r)
	refuseIPBlock(t, nps, np, w, r)
	refuseNeverValid(t, nps, w)
	fixCheckoutPolicy(t, nps, w, r)
	deletePolicies(t, nps, w, r)
}

// checkFirstDelivery: an object there before the watcher starts is in its
// first delivery, made before Synced is closed.
func checkFirstDelivery(t *testing.T, cl *kubetest.Cluster, nps networkingclient.NetworkPolicyInterface) (*k8spolicy.Watcher, *recorder) {
	t.Helper()
	if _, err := nps.Create(context.Background(), networkPolicy("db", "db", "checkout", 5432), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	w, r := run(t, k8spolicy.Config{Client: cl.Client})
	select {
	case <-w.Synced():
	case <-time.After(wait):
		t.Fatal("Synced not closed")
	}
	if n, _ := r.get(); n != 1 {
		t.Fatalf("Synced closed after %d deliveries, want 1", n)
	}
	if n, c := r.get(); n != 1 || c.Rules() != 1 || !allows(c, eastDB, eastCheckout, 5432) || allows(c, eastDB, eastFront, 5432) {
		t.Fatalf("first delivery: %d calls, %d rules: want one call with the db policy", n, c.Rules())
	}
	t.Logf("first delivery %v after start", time.Since(start).Round(time.Millisecond))
	if st := w.Status(); !st.Synced || st.CiliumNetworkPolicies || st.Objects != 1 {
		t.Fatalf("status %+v: want synced, 1 object, no CiliumNetworkPolicies (no CRD)", st)
	}
	return w, r
}

// createCheckoutPolicy: east's frontend may reach checkout on 8080; west's
// may not (a selector without the cluster label selects the local
// cluster).
func createCheckoutPolicy(t *testing.T, nps networkingclient.NetworkPolicyInterface, r *recorder) *networkingv1.NetworkPolicy {
	t.Helper()
	start := time.Now()
	np, err := nps.Create(context.Background(), networkPolicy("checkout", "checkout", "frontend", 8080), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.delivered(t, "checkout's policy", func(c *policy.Compiled) bool {
		return allows(c, eastCheckout, eastFront, 8080) && !allows(c, eastCheckout, eastFront, 9090)
	})
	t.Logf("created → delivered in %v", time.Since(start).Round(time.Millisecond))
	_, c := r.get()
	if allows(c, eastCheckout, westFront, 8080) || allows(c, eastCheckout, eastFront, 9090) || !allows(c, eastDB, eastCheckout, 5432) {
		t.Fatal("checkout's policy: west's frontend or port 9090 allowed, or the db policy gone")
	}
	return np
}

// refuseIPBlock updates np to something the mesh does not enforce: refused
// by name, the last valid version stays.
func refuseIPBlock(t *testing.T, nps networkingclient.NetworkPolicyInterface, np *networkingv1.NetworkPolicy, w *k8spolicy.Watcher, r *recorder) {
	t.Helper()
	np.Spec.Ingress[0].From = []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8"}}}
	if _, err := nps.Update(context.Background(), np, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "the ipBlock version refused", func() bool { return invalid(w, "NetworkPolicy", "checkout") != nil })
	e := invalid(w, "NetworkPolicy", "checkout")
	if !e.PreviousEnforced || !strings.Contains(e.Error, "NetworkPolicy shop/checkout") || !strings.Contains(e.Error, "spec.ingress[0].from[0].ipBlock") {
		t.Fatalf("invalid checkout: %+v: want the object, the field, and the previous version enforced", e)
	}
	if _, c := r.get(); !allows(c, eastCheckout, eastFront, 8080) {
		t.Fatal("the last valid version of checkout is no longer delivered")
	}
	if v := counter(t, w.Collector(), "clustermesh_policy_kubernetes_invalid_total", "NetworkPolicy"); v != 1 {
		t.Fatalf("invalid_total = %v, want 1", v)
	}
}

// refuseNeverValid: a new object never valid contributes nothing.
func refuseNeverValid(t *testing.T, nps networkingclient.NetworkPolicyInterface, w *k8spolicy.Watcher) {
	t.Helper()
	bad := networkPolicy("never-valid", "db", "frontend", 5432)
	bad.Spec.PodSelector.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpExists}}
	bad.Spec.Ingress[0].Ports[0].Port = ptr(intstr.FromString("postgres"))
	if _, err := nps.Create(context.Background(), bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "never-valid refused", func() bool { return invalid(w, "NetworkPolicy", "never-valid") != nil })
	if e := invalid(w, "NetworkPolicy", "never-valid"); e.PreviousEnforced || !strings.Contains(e.Error, `named port "postgres"`) {
		t.Fatalf("never-valid: %+v", e)
	}
	if st := w.Status(); st.Objects != 3 || st.Enforced != 2 {
		t.Fatalf("status %+v: want 3 objects, 2 enforced", st)
	}
}

// fixCheckoutPolicy: fixed, checkout's policy is enforced again and no
// longer reported.
func fixCheckoutPolicy(t *testing.T, nps networkingclient.NetworkPolicyInterface, w *k8spolicy.Watcher, r *recorder) {
	t.Helper()
	ctx := context.Background()
	np, err := nps.Get(ctx, "checkout", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	np.Spec.Ingress[0].From = []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "frontend"}}}}
	np.Spec.Ingress[0].Ports[0].Port = ptr(intstr.FromInt32(9090))
	if _, err := nps.Update(ctx, np, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.delivered(t, "checkout on 9090", func(c *policy.Compiled) bool {
		return allows(c, eastCheckout, eastFront, 9090) && !allows(c, eastCheckout, eastFront, 8080)
	})
	if invalid(w, "NetworkPolicy", "checkout") != nil {
		t.Fatal("checkout still reported invalid once fixed")
	}
}

// deletePolicies: a deleted object's rules are removed (checkout is no
// longer selected), and an invalid one deleted is no longer reported.
func deletePolicies(t *testing.T, nps networkingclient.NetworkPolicyInterface, w *k8spolicy.Watcher, r *recorder) {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	if err := nps.Delete(ctx, "checkout", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	r.delivered(t, "checkout's policy removed", func(c *policy.Compiled) bool {
		return allows(c, eastCheckout, westFront, 1234) && c.Rules() == 1
	})
	t.Logf("deleted → delivered in %v", time.Since(start).Round(time.Millisecond))
	if err := nps.Delete(ctx, "never-valid", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "never-valid forgotten", func() bool { return len(w.Status().Invalid) == 0 })
}

func ptr[T any](v T) *T { return &v }

var crds = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCNPCRD installs a minimal CiliumNetworkPolicy CRD (any content).
func installCNPCRD(t *testing.T, dyn dynamic.Interface) {
	t.Helper()
	crd := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
		"metadata": map[string]any{"name": "ciliumnetworkpolicies.cilium.io"},
		"spec": map[string]any{
			"group": "cilium.io", "scope": "Namespaced",
			"names": map[string]any{"plural": "ciliumnetworkpolicies", "singular": "ciliumnetworkpolicy",
				"kind": "CiliumNetworkPolicy", "listKind": "CiliumNetworkPolicyList", "shortNames": []any{"cnp"}},
			"versions": []any{map[string]any{"name": "v2", "served": true, "storage": true,
				"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}},
		},
	}}
	if _, err := dyn.Resource(crds).Create(context.Background(), crd, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func cnp(name string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": name, "namespace": "shop"},
		"spec":     spec,
	}}
}

// fromWest lets west's frontends (only) reach checkout on 8080.
var fromWest = map[string]any{
	"endpointSelector": map[string]any{"matchLabels": map[string]any{"app": "checkout"}},
	"ingress": []any{map[string]any{
		"fromEndpoints": []any{map[string]any{"matchLabels": map[string]any{"app": "frontend", wire.ClusterLabel: "west"}}},
		"toPorts":       []any{map[string]any{"ports": []any{map[string]any{"port": "8080", "protocol": "TCP"}}}},
	}},
}

func TestCiliumNetworkPolicies(t *testing.T) {
	env := kubetest.Start(t, "east")
	cl := env.Clusters[0]
	ctx := context.Background()
	if err := cl.CreateNamespace(ctx, "shop", nil); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cl.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Client.NetworkingV1().NetworkPolicies("shop").Create(ctx, networkPolicy("db", "db", "checkout", 5432), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// No CRD yet: NetworkPolicies only.
	w, r := run(t, k8spolicy.Config{Client: cl.Client, Dynamic: dyn})
	r.delivered(t, "the first delivery", func(c *policy.Compiled) bool { return c.Rules() == 1 })
	if w.Status().CiliumNetworkPolicies {
		t.Fatal("CiliumNetworkPolicies watched without their CRD")
	}

	// The CRD installed later is picked up.
	start := time.Now()
	installCNPCRD(t, dyn)
	testenv.WaitFor(t, wait, "CiliumNetworkPolicies watched", func() bool { return w.Status().CiliumNetworkPolicies })
	t.Logf("CRD installed → watched in %v", time.Since(start).Round(time.Millisecond))
	cnps := dyn.Resource(k8spolicy.CiliumNetworkPolicies).Namespace("shop")
	if _, err := cnps.Create(ctx, cnp("from-west", fromWest), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.delivered(t, "from-west compiled", func(c *policy.Compiled) bool {
		return allows(c, eastCheckout, westFront, 8080) && !allows(c, eastCheckout, westFront, 9090)
	})
	if _, c := r.get(); allows(c, eastCheckout, eastFront, 8080) || !allows(c, eastDB, eastCheckout, 5432) {
		t.Fatal("from-west: east's frontend allowed, or the NetworkPolicy gone")
	}

	// A bad operator is refused by name.
	bad := map[string]any{
		"endpointSelector": map[string]any{"matchExpressions": []any{map[string]any{"key": "app", "operator": "Like", "values": []any{"db"}}}},
		"ingress":          []any{map[string]any{}},
	}
	if _, err := cnps.Create(ctx, cnp("bad-operator", bad), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "bad-operator refused", func() bool { return invalid(w, "CiliumNetworkPolicy", "bad-operator") != nil })
	if e := invalid(w, "CiliumNetworkPolicy", "bad-operator"); !strings.Contains(e.Error, "CiliumNetworkPolicy shop/bad-operator") ||
		!strings.Contains(e.Error, `"Like"`) || e.PreviousEnforced {
		t.Fatalf("bad-operator: %+v: want the object and the operator named", e)
	}
	if v := counter(t, w.Collector(), "clustermesh_policy_kubernetes_invalid_total", "CiliumNetworkPolicy"); v != 1 {
		t.Fatalf("invalid_total = %v, want 1", v)
	}

	// A watcher started with the CRD in place has the CNP in its first
	// delivery.
	_, r2 := run(t, k8spolicy.Config{Client: cl.Client, Dynamic: dyn})
	r2.delivered(t, "the second watcher's first delivery", func(*policy.Compiled) bool { return true })
	if n, c := r2.get(); n != 1 || c.Rules() != 2 || !allows(c, eastCheckout, westFront, 8080) || allows(c, eastCheckout, eastFront, 8080) {
		t.Fatalf("second watcher: %d calls, %d rules: want one with both valid policies", n, c.Rules())
	}

	// The CRD removed: its objects' rules go with it.
	start = time.Now()
	if err := dyn.Resource(crds).Delete(ctx, "ciliumnetworkpolicies.cilium.io", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	r.delivered(t, "the CiliumNetworkPolicies removed", func(c *policy.Compiled) bool {
		return c.Rules() == 1 && allows(c, eastCheckout, eastFront, 8080) && allows(c, eastDB, eastCheckout, 5432)
	})
	testenv.WaitFor(t, wait, "CiliumNetworkPolicies no longer watched", func() bool {
		st := w.Status()
		return !st.CiliumNetworkPolicies && st.Objects == 1
	})
	t.Logf("CRD removed → removed in %v", time.Since(start).Round(time.Millisecond))
}
