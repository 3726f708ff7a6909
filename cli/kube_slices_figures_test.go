package cli

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8sslices"
)

// The figure of the whole path: a remote backend's readiness changes in
// west's kube-apiserver → west's apiserver publishes → east's slices writer
// syncs it → east's EndpointSlice is updated, as a watch on east sees it;
// p99 over 100 changes (goal ≤ 1,000 ms).
func TestFiguresSlicesPropagation(t *testing.T) {
	figure.Require(t)
	m := startSlicesMesh(t)
	ctx := context.Background()
	// A second backend in west, whose readiness the test toggles: east's
	// slice of west then lists one or two addresses.
	if _, err := m.west.CreatePod(ctx, kubetest.Pod{Namespace: "shop", Name: "checkout-w2", Node: "w1", IP: "10.2.1.11", Labels: map[string]string{"app": "checkout"}}); err != nil {
		t.Fatal(err)
	}
	ready := true
	ws, err := m.west.Client.DiscoveryV1().EndpointSlices("shop").Get(ctx, m.westSlice.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ws.Endpoints = append(ws.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.2.1.11"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
		TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: "checkout-w2"}})
	if ws, err = m.west.Client.DiscoveryV1().EndpointSlices("shop").Update(ctx, ws, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	seen := watchRemoteCount(t, m.east, "west")
	testenv.WaitFor(t, slicesBound, "both west backends in east's slice", func() bool { return seen.count() == 2 })

	const n = 100
	var took []time.Duration
	for i := range n {
		up := i%2 == 1
		want := 1
		if up {
			want = 2
		}
		ws.Endpoints[1].Conditions.Ready = &up
		start := time.Now()
		if ws, err = m.west.Client.DiscoveryV1().EndpointSlices("shop").Update(ctx, ws, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		at := seen.waitFor(t, want, slicesBound)
		took = append(took, at.Sub(start))
	}
	slices.Sort(took)
	p50, p99 := took[n/2], took[n*99/100-1]
	t.Logf("west readiness change → east's EndpointSlice: p50 %s, p99 %s, max %s over %d changes", p50, p99, took[n-1], n)
	figure.Print("k8s.slices.propagation_p99_ms", float64(p99.Microseconds())/1000, "ms")
}

// remoteCount follows, through a watch, how many addresses c's slices of
// shop/checkout from cluster list, and when each count was seen.
type remoteCount struct {
	mu     sync.Mutex
	byName map[string]int
	n      int
	at     time.Time
}

func watchRemoteCount(t *testing.T, c *kubetest.Cluster, cluster string) *remoteCount {
	t.Helper()
	w, err := c.Client.DiscoveryV1().EndpointSlices("shop").Watch(context.Background(), metav1.ListOptions{
		LabelSelector: discoveryv1.LabelManagedBy + "=" + k8sslices.ManagedBy + "," + k8sslices.LabelSourceCluster + "=" + cluster})
	if err != nil {
		t.Fatal(err)
	}
	rc := &remoteCount{byName: map[string]int{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			s, ok := ev.Object.(*discoveryv1.EndpointSlice)
			if !ok {
				continue
			}
			rc.mu.Lock()
			if ev.Type == watch.Deleted {
				delete(rc.byName, s.Name)
			} else {
				rc.byName[s.Name] = len(s.Endpoints)
			}
			rc.n = 0
			for _, v := range rc.byName {
				rc.n += v
			}
			rc.at = time.Now()
			rc.mu.Unlock()
		}
	}()
	t.Cleanup(func() { w.Stop(); <-done })
	return rc
}

func (rc *remoteCount) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.n
}

// waitFor returns when the count became want, failing t after timeout.
func (rc *remoteCount) waitFor(t *testing.T, want int, timeout time.Duration) time.Time {
	t.Helper()
	var at time.Time
	testenv.WaitFor(t, timeout, "the slice's new count", func() bool {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		at = rc.at
		return rc.n == want
	})
	return at
}
