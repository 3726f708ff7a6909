package k8sslices_test

import (
	"context"
	"slices"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8sslices"
)

const wait = 20 * time.Second

// A remote's backends appear as one slice per remote cluster with the
// labels, ports, conditions and owner a reader expects, follow the
// backends, and go with the remote and with the annotation.
func TestK8sSlicesFollowRemoteBackends(t *testing.T) {
	env := kubetest.Start(t, "east")
	client := env.Clusters[0].Client
	src := newSource()
	svc := createService(t, client, "web", globalSync())
	createService(t, client, "plain", map[string]string{k8sslices.AnnotationGlobal: "true"})
	src.set("default", "web", "west", 8080, "10.2.0.1", "10.2.0.2")
	src.set("default", "web", "north", 8080, "10.3.0.1", "fd00::1")
	src.set("default", "plain", "west", 8080, "10.2.0.9")
	w, _ := run(t, client, src, "a", nil)

	testenv.WaitFor(t, wait, "the slices of west and north", func() bool {
		ss := owned(t, client, "web")
		return slices.Equal(addresses(ss, "west"), []string{"10.2.0.1", "10.2.0.2"}) &&
			slices.Equal(addresses(ss, "north"), []string{"10.3.0.1", "fd00::1"}) && len(ss) == 3
	})
	for _, s := range owned(t, client, "web") {
		if s.Labels[discoveryv1.LabelServiceName] != "web" || len(s.OwnerReferences) != 1 || s.OwnerReferences[0].UID != svc.UID {
			t.Errorf("slice %s: labels %v, owners %v", s.Name, s.Labels, s.OwnerReferences)
		}
		if len(s.Ports) != 1 || *s.Ports[0].Name != "http" || *s.Ports[0].Port != 8080 {
			t.Errorf("slice %s: ports %v", s.Name, s.Ports)
		}
		for _, e := range s.Endpoints {
			if c := e.Conditions; !*c.Ready || !*c.Serving || *c.Terminating {
				t.Errorf("slice %s: endpoint %v conditions %+v", s.Name, e.Addresses, c)
			}
		}
	}
	if ss := owned(t, client, "plain"); len(ss) != 0 {
		t.Errorf("a global service without the annotation has slices: %v", ss)
	}

	// A backend goes (not ready any more: the remote no longer offers it),
	// one comes; a cluster goes (disconnected).
	src.set("default", "web", "west", 8080, "10.2.0.2", "10.2.0.3")
	src.set("default", "web", "north", 0)
	testenv.WaitFor(t, wait, "west's new backends, north's slices gone", func() bool {
		ss := owned(t, client, "web")
		return slices.Equal(addresses(ss, "west"), []string{"10.2.0.2", "10.2.0.3"}) && len(ss) == 1
	})

	// The annotation goes: the slices go.
	svc, _ = client.CoreV1().Services("default").Get(context.Background(), "web", metav1.GetOptions{})
	delete(svc.Annotations, k8sslices.AnnotationSyncEndpointSlices)
	if _, err := client.CoreV1().Services("default").Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "the slices gone with the annotation", func() bool { return len(owned(t, client, "web")) == 0 })
	st := w.Status()
	if !st.Leader || st.Holder != "a" || st.Conflicts != 0 || st.WriteErrors != 0 || st.Writes == 0 {
		t.Errorf("status %+v", st)
	}
}

// With AllGlobal every global service has slices, but for one annotated
// "false".
func TestK8sSlicesAllGlobal(t *testing.T) {
	env := kubetest.Start(t, "east")
	client := env.Clusters[0].Client
	src := newSource()
	createService(t, client, "a", map[string]string{k8sslices.AnnotationGlobal: "true"})
	createService(t, client, "b", map[string]string{k8sslices.AnnotationGlobal: "true", k8sslices.AnnotationSyncEndpointSlices: "false"})
	createService(t, client, "c", nil)
	for _, n := range []string{"a", "b", "c"} {
		src.set("default", n, "west", 80, "10.2.0.1")
	}
	w, _ := run(t, client, src, "a", func(c *k8sslices.Config) { c.AllGlobal = true })
	testenv.WaitFor(t, wait, "a's slice", func() bool { return len(owned(t, client, "a")) == 1 })
	testenv.WaitFor(t, wait, "a pass after it", func() bool { return w.Status().Slices == 1 })
	if len(owned(t, client, "b")) != 0 || len(owned(t, client, "c")) != 0 {
		t.Errorf("slices for b (annotated false) or c (not global): %v %v", owned(t, client, "b"), owned(t, client, "c"))
	}
}

// Slices the writer does not own are never touched: another controller's
// slice of the service stays as it is, and a slice that has the name the
// writer wants, without its label, is a conflict, left alone.
func TestK8sSlicesOwnership(t *testing.T) {
	env := kubetest.Start(t, "east")
	client := env.Clusters[0].Client
	ctx := context.Background()
	src := newSource()
	createService(t, client, "web", globalSync())
	foreign := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "web-local", Namespace: "default", Labels: map[string]string{
			discoveryv1.LabelServiceName: "web", discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.1.0.1"}}},
	}
	foreign, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, foreign, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Learn the name the writer gives west's slice, then take it.
	src.set("default", "web", "west", 80, "10.2.0.1")
	_, stop := run(t, client, src, "a", nil)
	var name string
	testenv.WaitFor(t, wait, "west's slice", func() bool {
		ss := owned(t, client, "web")
		if len(ss) == 1 {
			name = ss[0].Name
		}
		return name != ""
	})
	stop()
	if err := client.DiscoveryV1().EndpointSlices("default").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	squatter := foreign.DeepCopy()
	squatter.ObjectMeta = metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}}
	if _, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, squatter, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w, _ := run(t, client, newSourceLike(src), "b", nil)
	testenv.WaitFor(t, wait, "a conflict on the squatted name", func() bool { return w.Status().Conflicts > 0 })
	for _, n := range []string{"web-local", name} {
		got, err := client.DiscoveryV1().EndpointSlices("default").Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Labels[discoveryv1.LabelManagedBy] == k8sslices.ManagedBy {
			t.Errorf("slice %s was taken over: %+v", n, got.Labels)
		}
		if len(got.Endpoints) != 1 || got.Endpoints[0].Addresses[0] != "10.1.0.1" {
			t.Errorf("slice %s endpoints changed: %v", n, got.Endpoints)
		}
	}
}

// newSourceLike is a source with src's services (and no writers yet).
func newSourceLike(src *source) *source {
	src.mu.Lock()
	defer src.mu.Unlock()
	n := newSource()
	for k, v := range src.svcs {
		n.svcs[k] = slices.Clone(v)
	}
	return n
}

// A slice of the writer's edited or deleted by someone else is put back.
func TestK8sSlicesRestored(t *testing.T) {
	env := kubetest.Start(t, "east")
	client := env.Clusters[0].Client
	ctx := context.Background()
	src := newSource()
	createService(t, client, "web", globalSync())
	src.set("default", "web", "west", 80, "10.2.0.1")
	run(t, client, src, "a", nil)
	testenv.WaitFor(t, wait, "west's slice", func() bool { return len(owned(t, client, "web")) == 1 })
	s := owned(t, client, "web")[0]
	s.Endpoints[0].Addresses = []string{"10.9.9.9"}
	if _, err := client.DiscoveryV1().EndpointSlices("default").Update(ctx, &s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "the edited slice put back", func() bool {
		return slices.Equal(addresses(owned(t, client, "web"), "west"), []string{"10.2.0.1"})
	})
	if err := client.DiscoveryV1().EndpointSlices("default").Delete(ctx, s.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "the deleted slice put back", func() bool {
		ss := owned(t, client, "web")
		return len(ss) == 1 && ss[0].UID != s.UID
	})
}
