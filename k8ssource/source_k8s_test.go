package k8ssource_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8ssource"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

const wgKey = "mPx0X4SWVTnm6dXA+fEUYAcDXbuCkhMvfsAKbq1sOzI="

// recorder keeps every State a source delivers.
type recorder struct {
	mu     sync.Mutex
	states []*statesource.State
}

func (r *recorder) onChange(st *statesource.State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.states = append(r.states, st)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.states)
}

func (r *recorder) last() *statesource.State {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.states) == 0 {
		return nil
	}
	return r.states[len(r.states)-1]
}

// run starts src and stops it when t ends.
func run(t *testing.T, src *k8ssource.Source) *recorder {
	t.Helper()
	r := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, r.onChange) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

func endpoint(st *statesource.State, ns, pod string) *statesource.Endpoint {
	for i := range st.Endpoints {
		if e := st.Endpoints[i]; e.Namespace == ns && e.Pod == pod {
			return e
		}
	}
	return nil
}

// must fails t on an error and returns the value: must(t)(f()).
func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// ok fails t on an error: ok(t)(f()).
func ok(t *testing.T) func(any, error) {
	return func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

func sliceEndpoint(pod, ip, node string, ready, serving, terminating bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{ip},
		Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating},
		NodeName:   &node,
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: pod},
	}
}

// A global service with its EndpointSlices, pods and nodes, created before
// the source starts, is in the first State it delivers; an endpoint turning
// not ready, then terminating, gives new States.
func TestK8sSourceState(t *testing.T) {
	env := kubetest.Start(t, "east")
	c := env.Clusters[0]
	svc, slice := createCheckout(t, c)

	r := run(t, &k8ssource.Source{Client: c.Client})
	testenv.WaitFor(t, 30*time.Second, "the first State", func() bool { return r.count() > 0 })
	st := r.last()
	checkNodes(t, st)
	checkEndpoints(t, st)
	checkService(t, st, svc)

	checkReadinessChanges(t, c, r, slice)
	removeKeyAndPod(t, c, r)
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, st := range r.states {
		if err := st.Validate(); err != nil {
			t.Errorf("state %d: %v", i, err)
		}
	}
}

// createCheckout creates the namespace shop (team=payments), the nodes n1
// (with a WireGuard key) and n2, a checkout pod on each, the global service
// checkout with a named target port and its EndpointSlice.
func createCheckout(t *testing.T, c *kubetest.Cluster) (*corev1.Service, *discoveryv1.EndpointSlice) {
	t.Helper()
	ctx := context.Background()
	if err := c.CreateNamespace(ctx, "shop", map[string]string{"team": "payments"}); err != nil {
		t.Fatal(err)
	}
	ok(t)(c.CreateNode(ctx, kubetest.Node{Name: "n1", InternalIP: "192.168.1.1", ExternalIP: "203.0.113.1",
		PodCIDRs: []string{"10.1.1.0/24"}, Annotations: map[string]string{k8ssource.AnnotationWireguardPubKey: wgKey}}))
	n2 := must[*corev1.Node](t)(c.CreateNode(ctx, kubetest.Node{Name: "n2", InternalIP: "192.168.1.2", PodCIDRs: []string{"10.1.2.0/24"}}))
	n2.Labels = map[string]string{corev1.LabelTopologyZone: "eu-1b"} // checkout-2's zone: its slice endpoint names none
	ok(t)(c.Client.CoreV1().Nodes().Update(ctx, n2, metav1.UpdateOptions{}))
	e1 := sliceEndpoint("checkout-1", "10.1.1.11", "n1", true, true, false)
	e1.Zone, e1.Hostname = ptr("eu-1a"), ptr("checkout-1")
	e1.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "eu-1a"}, {Name: "eu-1c"}}}
	ok(t)(c.CreatePod(ctx, kubetest.Pod{Namespace: "shop", Name: "checkout-1", Node: "n1", IP: "10.1.1.11", Labels: map[string]string{"app": "checkout"}}))
	ok(t)(c.CreatePod(ctx, kubetest.Pod{Namespace: "shop", Name: "checkout-2", Node: "n2", IP: "10.1.2.12", Labels: map[string]string{"app": "checkout"}}))
	svc := must[*corev1.Service](t)(c.Client.CoreV1().Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "checkout", Annotations: map[string]string{
			wire.AnnotationGlobal: "true", wire.AnnotationAffinity: "local", "unrelated.example/x": "y",
		}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "checkout"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{}))
	slice := must[*discoveryv1.EndpointSlice](t)(c.Client.DiscoveryV1().EndpointSlices("shop").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "checkout-abc", Labels: map[string]string{discoveryv1.LabelServiceName: "checkout"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			e1,
			sliceEndpoint("checkout-2", "10.1.2.12", "n2", true, true, false),
		},
		Ports: []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{}))
	return svc, slice
}

// checkNodes: InternalIP only (there is one), pod CIDRs, WireGuard key.
func checkNodes(t *testing.T, st *statesource.State) {
	t.Helper()
	if len(st.Nodes) != 2 {
		t.Fatalf("nodes: %+v", st.Nodes)
	}
	n1 := st.Nodes[0]
	if n1.Name != "n1" || len(n1.IPs) != 1 || n1.IPs[0] != netip.MustParseAddr("192.168.1.1") ||
		len(n1.PodCIDRs) != 1 || n1.PodCIDRs[0] != netip.MustParsePrefix("10.1.1.0/24") || n1.WireguardPubKey != wgKey {
		t.Errorf("node n1: %+v", n1)
	}
}

// checkEndpoints: IP, node, labels with the namespace's, readiness.
func checkEndpoints(t *testing.T, st *statesource.State) {
	t.Helper()
	e1, e2 := endpoint(st, "shop", "checkout-1"), endpoint(st, "shop", "checkout-2")
	if e1 == nil || e2 == nil {
		t.Fatalf("endpoints: %+v", st.Endpoints)
	}
	if e1.IP != netip.MustParseAddr("10.1.1.11") || e1.Node != "n1" || e1.Labels["app"] != "checkout" ||
		identityLabel(e1, k8ssource.NamespaceLabelPrefix+"team") != "payments" || !e1.IsReady() || !e2.IsReady() {
		t.Errorf("endpoint checkout-1: %+v", e1)
	}
	// Topology: checkout-1's from its slice endpoint, checkout-2's zone
	// from its node's label.
	if e1.Zone != "eu-1a" || e1.Hostname != "checkout-1" || fmt.Sprint(e1.ForZones) != "[eu-1a eu-1c]" ||
		e2.Zone != "eu-1b" || e2.Hostname != "" || e2.ForZones != nil {
		t.Errorf("topology: checkout-1 %q %q %v, checkout-2 %q %q %v", e1.Zone, e1.Hostname, e1.ForZones, e2.Zone, e2.Hostname, e2.ForZones)
	}
	// The API server labels every namespace with its name; Cilium's
	// identities carry it as a namespace label.
	if v := identityLabel(e1, k8ssource.NamespaceLabelPrefix+"kubernetes.io/metadata.name"); v != "shop" {
		t.Errorf("checkout-1 identity %s: no namespace label kubernetes.io/metadata.name=shop", e1.IdentityLabels("east"))
	}
}

// identityLabel is the value of key among e's identity labels.
func identityLabel(e *statesource.Endpoint, key string) string {
	v, _ := e.IdentityLabels("east").Get(key)
	return v
}

// checkService: cluster IP allocated by the API server, the named target
// port resolved by the slice, only the mesh's annotations.
func checkService(t *testing.T, st *statesource.State, svc *corev1.Service) {
	t.Helper()
	if len(st.Services) == 0 {
		t.Fatalf("services: %+v", st.Services)
	}
	var s *statesource.Service
	for i := range st.Services {
		if st.Services[i].Namespace == "shop" && st.Services[i].Name == "checkout" {
			s = &st.Services[i]
		}
	}
	if s == nil {
		t.Fatalf("no shop/checkout in %+v", st.Services)
	}
	if s.ClusterIP != netip.MustParseAddr(svc.Spec.ClusterIP) || !s.Global() || s.Affinity() != "local" ||
		len(s.Annotations) != 2 || len(s.Ports) != 1 || s.Ports[0].Target() != 8080 || s.Ports[0].Port != 80 {
		t.Errorf("service: %+v", s)
	}
	if got := st.Backends(s); len(got) != 2 {
		t.Errorf("backends: %d, want 2", len(got))
	}
}

// checkReadinessChanges turns checkout-2 not ready in its slice, then
// terminating but still serving, and waits for each in a State.
func checkReadinessChanges(t *testing.T, c *kubetest.Cluster, r *recorder, slice *discoveryv1.EndpointSlice) {
	t.Helper()
	ctx := context.Background()
	slice.Endpoints[1] = sliceEndpoint("checkout-2", "10.1.2.12", "n2", false, false, false)
	slice = must[*discoveryv1.EndpointSlice](t)(c.Client.DiscoveryV1().EndpointSlices("shop").Update(ctx, slice, metav1.UpdateOptions{}))
	testenv.WaitFor(t, 10*time.Second, "checkout-2 not ready", func() bool {
		e := endpoint(r.last(), "shop", "checkout-2")
		return e != nil && !e.IsReady() && !e.IsServing()
	})
	if e := endpoint(r.last(), "shop", "checkout-1"); !e.IsReady() {
		t.Errorf("checkout-1 changed: %+v", e)
	}
	// Delivered as that endpoint's change alone (the apiserver publishes
	// only what it touches): the slice's other endpoint is unchanged. (Its
	// services may have changed: the API server creates its own.)
	if ch := r.last().Changes; ch == nil || len(ch.Endpoints) != 1 || ch.Endpoints[0].Pod != "checkout-2" ||
		len(ch.RemovedEndpoints) != 0 || ch.Nodes {
		t.Errorf("a readiness change delivered with Changes %+v", ch)
	}
	// Terminating but still serving: not ready, serving.
	slice.Endpoints[1] = sliceEndpoint("checkout-2", "10.1.2.12", "n2", false, true, true)
	ok(t)(c.Client.DiscoveryV1().EndpointSlices("shop").Update(ctx, slice, metav1.UpdateOptions{}))
	testenv.WaitFor(t, 10*time.Second, "checkout-2 terminating and serving", func() bool {
		e := endpoint(r.last(), "shop", "checkout-2")
		return e != nil && !e.IsReady() && e.IsServing()
	})
}

// removeKeyAndPod removes n1's WireGuard key and deletes checkout-1, and
// waits for both in a State.
func removeKeyAndPod(t *testing.T, c *kubetest.Cluster, r *recorder) {
	t.Helper()
	ctx := context.Background()
	n := must[*corev1.Node](t)(c.Client.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{}))
	delete(n.Annotations, k8ssource.AnnotationWireguardPubKey)
	ok(t)(c.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}))
	if err := c.Client.CoreV1().Pods("shop").Delete(ctx, "checkout-1", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "key and pod gone", func() bool {
		st := r.last()
		return st.Nodes[0].WireguardPubKey == "" && endpoint(st, "shop", "checkout-1") == nil
	})
}

// A burst of changes gives a few States, not one per change, and nothing
// when nothing changed.
func TestK8sSourceCoalesces(t *testing.T) {
	env := kubetest.Start(t, "east")
	c := env.Clusters[0]
	ctx := context.Background()
	if err := c.CreateNamespace(ctx, "burst", nil); err != nil {
		t.Fatal(err)
	}
	ok(t)(c.CreateNode(ctx, kubetest.Node{Name: "n1", InternalIP: "192.168.1.1"}))
	r := run(t, &k8ssource.Source{Client: c.Client, Coalesce: 200 * time.Millisecond})
	testenv.WaitFor(t, 30*time.Second, "the first State", func() bool { return r.count() > 0 })

	const pods = 40
	var wg sync.WaitGroup
	errs := make(chan error, pods)
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.CreatePod(ctx, kubetest.Pod{Namespace: "burst", Name: fmt.Sprintf("p%d", i), Node: "n1",
				IP: fmt.Sprintf("10.9.0.%d", i+1), Labels: map[string]string{"app": "burst"}})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 10*time.Second, "every pod", func() bool { return len(r.last().Endpoints) == pods })
	if n := r.count() - 1; n > pods/4 {
		t.Errorf("%d pods (%d writes) gave %d States, want a few", pods, 2*pods, n)
	} else {
		t.Logf("%d pods (%d writes) gave %d States", pods, 2*pods, n)
	}
	// A change that changes nothing of the State (a pod annotation) is not
	// delivered.
	before := r.count()
	p := must[*corev1.Pod](t)(c.Client.CoreV1().Pods("burst").Get(ctx, "p0", metav1.GetOptions{}))
	p.Annotations = map[string]string{"note": "irrelevant"}
	ok(t)(c.Client.CoreV1().Pods("burst").Update(ctx, p, metav1.UpdateOptions{}))
	ok(t)(c.CreatePod(ctx, kubetest.Pod{Namespace: "burst", Name: "marker", Node: "n1", IP: "10.9.1.1"}))
	testenv.WaitFor(t, 10*time.Second, "the marker pod", func() bool { return endpoint(r.last(), "burst", "marker") != nil })
	if got := r.count() - before; got != 1 {
		t.Errorf("an annotation and a new pod gave %d States, want 1", got)
	}
}

func ptr[T any](v T) *T { return &v }
