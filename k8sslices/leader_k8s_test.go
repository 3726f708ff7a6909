package k8sslices_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8sslices"
)

// Two writers share the Lease: one writes, the slices exist once; when the
// leader stops, the other takes over and follows the next change. A watch
// sees every slice the writers ever create: never two for one cluster.
func TestK8sSlicesOneWriter(t *testing.T) {
	env := kubetest.Start(t, "east")
	client := env.Clusters[0].Client
	createService(t, client, "web", globalSync())
	created := watchCreates(t, client)
	src := newSource()
	src.set("default", "web", "west", 80, "10.2.0.1")
	a, stopA := run(t, client, src, "a", nil)
	testenv.WaitFor(t, wait, "a leader", func() bool { return a.Status().Leader })
	b, _ := run(t, client, src, "b", nil)
	testenv.WaitFor(t, wait, "b seeing a lead", func() bool { return b.Status().Holder == "a" })
	testenv.WaitFor(t, wait, "west's slice", func() bool { return len(owned(t, client, "web")) == 1 })
	for i := range 5 {
		src.set("default", "web", "west", 80, fmt.Sprintf("10.2.0.%d", i+2))
	}
	testenv.WaitFor(t, wait, "the last backend", func() bool {
		return slices.Equal(addresses(owned(t, client, "web"), "west"), []string{"10.2.0.6"})
	})
	if b.Status().Leader || b.Status().Writes != 0 {
		t.Errorf("the second writer wrote or leads: %+v", b.Status())
	}

	stopA()
	testenv.WaitFor(t, wait, "b leading", func() bool { return b.Status().Leader })
	src.set("default", "web", "west", 80, "10.2.0.7")
	src.set("default", "web", "north", 80, "10.3.0.1")
	testenv.WaitFor(t, wait, "b's writes", func() bool {
		ss := owned(t, client, "web")
		return len(ss) == 2 && slices.Equal(addresses(ss, "west"), []string{"10.2.0.7"})
	})
	if n := created(); n != 2 {
		t.Errorf("%d slices created, want 2 (one per cluster, whichever writer)", n)
	}
}

// watchCreates counts the ADDED events of the writers' slices from now on;
// the returned function reads the count.
func watchCreates(t *testing.T, client kubernetes.Interface) func() int {
	t.Helper()
	w, err := client.DiscoveryV1().EndpointSlices("default").Watch(context.Background(), metav1.ListOptions{
		LabelSelector: discoveryv1.LabelManagedBy + "=" + k8sslices.ManagedBy})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			if ev.Type == watch.Added {
				mu.Lock()
				n++
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { w.Stop(); <-done })
	return func() int { mu.Lock(); defer mu.Unlock(); return n }
}
