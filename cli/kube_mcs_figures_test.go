package cli

import (
	"context"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/clustermesh/clustermesh/internal/figure"
)

// The MCS API's whole path: a ServiceExport created in west's
// kube-apiserver → west's Kubernetes source → west's mesh apiserver
// publishes the spec → east's MCS controller reads it → east's
// ServiceImport with its ClusterSetIP (import created, derived Service
// created with an address of the range, import updated), as a watch on east
// sees it; and the export's deletion → east's import deleted. p99 over 50
// of each.
func TestFiguresMCSImport(t *testing.T) {
	figure.Require(t)
	m := startMCSMesh(t)
	ctx := context.Background()
	w, err := m.mcs["east"].MulticlusterV1beta1().ServiceImports("shop").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	// wait returns when east's watch shows shop/checkout with ips (present)
	// or deleted (!present).
	wait := func(present bool) time.Time {
		deadline := time.After(mcsBound)
		for {
			select {
			case ev, ok := <-w.ResultChan():
				if !ok {
					t.Fatal("east's watch of ServiceImports closed")
				}
				si, _ := ev.Object.(*mcsv1beta1.ServiceImport)
				if si == nil || si.Name != "checkout" {
					continue
				}
				if present && ev.Type != watch.Deleted && len(si.Spec.IPs) == 1 || !present && ev.Type == watch.Deleted {
					return time.Now()
				}
			case <-deadline:
				t.Fatalf("east's ServiceImport not %v after %s", map[bool]string{true: "imported", false: "deleted"}[present], mcsBound)
			}
		}
	}
	const n = 50
	var imp, del []time.Duration
	exports := m.mcs["west"].MulticlusterV1beta1().ServiceExports("shop")
	for range n {
		start := time.Now()
		export(t, m.mcs["west"], "shop", "checkout")
		imp = append(imp, wait(true).Sub(start))
		start = time.Now()
		if err := exports.Delete(ctx, "checkout", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		del = append(del, wait(false).Sub(start))
	}
	slices.Sort(imp)
	slices.Sort(del)
	p := func(d []time.Duration, q int) time.Duration { return d[n*q/100-1] }
	t.Logf("west's export → east's import with its ClusterSetIP: p50 %s, p99 %s; unexport → import deleted: p50 %s, p99 %s (%d each)",
		p(imp, 50), p(imp, 99), p(del, 50), p(del, 99), n)
	figure.Print("k8s.mcs.import_p99_ms", float64(p(imp, 99).Microseconds())/1000, "ms")
	figure.Print("k8s.mcs.unexport_p99_ms", float64(p(del, 99).Microseconds())/1000, "ms")
}
