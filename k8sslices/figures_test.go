package k8sslices_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8sslices"
)

// A burst of remote changes is coalesced: the writer, told of each, writes
// a few times, not once per change.
func TestK8sSlicesCoalesceBurst(t *testing.T) {
	env := kubetest.Start(t, "east")
	writes := burst(t, env.Clusters[0], 200, 0)
	if writes > 20 {
		t.Errorf("%d writes for a burst of 200 changes", writes)
	}
}

// burst makes n changes of west's backends of a service, one every pace
// (0: as fast as the source takes them), and returns the writes the writer
// (coalescing with its default window) made for them.
func burst(t *testing.T, c *kubetest.Cluster, n int, pace time.Duration) uint64 {
	t.Helper()
	client := c.Client
	createService(t, client, "web", globalSync())
	src := newSource()
	addrs := func(i int) []string {
		out := []string{"10.2.0.1", "10.2.0.2", "10.2.0.3"}
		return append(out, fmt.Sprintf("10.2.%d.%d", 1+i/250, 1+i%250))
	}
	src.set("default", "web", "west", 80, addrs(0)...)
	w, _ := run(t, client, src, "a", func(c *k8sslices.Config) { c.Coalesce = k8sslices.DefaultCoalesce })
	testenv.WaitFor(t, wait, "the first slice", func() bool { return len(owned(t, client, "web")) == 1 })
	before := w.Status().Writes
	start := time.Now()
	tick := time.NewTicker(max(pace, time.Microsecond))
	defer tick.Stop()
	for i := 1; i <= n; i++ {
		src.set("default", "web", "west", 80, addrs(i)...)
		if pace > 0 {
			<-tick.C
		}
	}
	want := addrs(n)
	slices.Sort(want)
	testenv.WaitFor(t, wait, "the burst's last state", func() bool {
		return slices.Equal(addresses(owned(t, client, "web"), "west"), want)
	})
	// The status counts a write once it returns, which a watcher of the
	// slice may see first.
	testenv.WaitFor(t, wait, "the last write counted", func() bool { return w.Status().Writes > before })
	writes := w.Status().Writes - before
	t.Logf("%d changes, one every %s, in %s: %d writes", n, pace, time.Since(start).Round(time.Millisecond), writes)
	return writes
}

// The figure of the writer's coalescing: API writes per remote change in
// a burst of 1,000 changes (goal ≤ 0.1).
func TestFiguresSlicesWrites(t *testing.T) {
	figure.Require(t)
	env := kubetest.Start(t, "east", "paced")
	const n = 1000
	writes := burst(t, env.Clusters[0], n, 0)
	figure.Print("k8s.slices.writes_per_change", float64(writes)/n, "writes")
	// The same changes spread over about 2 s (one every 2 ms): the writer
	// writes about once per coalescing window.
	burst(t, env.Clusters[1], n, 2*time.Millisecond)
}
