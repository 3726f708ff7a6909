package ui

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/clustermesh/clustermesh/internal/browsertest"
	"github.com/clustermesh/clustermesh/internal/figure"
)

// edgeJS is a JavaScript expression: the edge element of id, or null.
func edgeJS(id string) string {
	return "document.querySelector('path.edge[data-id=" + strconv.Quote(id) + "]')"
}

// TestPageInBrowser drives the page in headless Chromium against a UI that
// follows a real Observer server: no console error, the edges appear, a new
// one arrives live, a drop is drawn in the drop color, and a click lists the
// edge's dropped flow; a global service lists the clusters that served it;
// the verdict filter keeps the dropped edge alone.
func TestPageInBrowser(t *testing.T) {
	b := browsertest.Start(t)
	o := startObserver(t)
	o.hub.Publish(flow("west/shop/frontend", "east/shop/checkout", 8080, flowpb.Verdict_FORWARDED))
	base, _ := startUI(t, o, Config{})
	browsertest.Navigate(t, b, base+"/")

	allowed := "west/shop/frontend -> east/shop/checkout 8080/TCP"
	browsertest.WaitJS(t, b, 10*time.Second, "the allowed edge", edgeJS(allowed)+" !== null")
	browsertest.WaitJS(t, b, 5*time.Second, "both workloads", `document.querySelectorAll('g.node[data-id="west/shop/frontend"], g.node[data-id="east/shop/checkout"]').length === 2`)
	if c := browsertest.Eval[string](t, b, edgeJS(allowed)+".getAttribute('class')"); c != "edge ok" {
		t.Errorf("the allowed edge's class %q, want edge ok", c)
	}

	denied := "north/shop/frontend -> east/shop/checkout 8080/TCP"
	o.hub.Publish(flow("north/shop/frontend", "east/shop/checkout", 8080, flowpb.Verdict_DROPPED))
	browsertest.WaitJS(t, b, 10*time.Second, "the dropped edge, live, in the drop color", edgeJS(denied)+" !== null && "+edgeJS(denied)+".classList.contains('drop')")

	browsertest.Eval[bool](t, b, edgeJS(denied)+".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
	browsertest.WaitJS(t, b, 10*time.Second, "the dropped flow in the edge's list",
		`Array.from(document.querySelectorAll('#flows tr.flow')).some(tr => tr.dataset.verdict === 'DROPPED' && tr.textContent.includes('north/shop/frontend-0:40000 (ID:70000) -> east/shop/checkout-0:8080'))`)
	browsertest.WaitJS(t, b, 5*time.Second, "the filter offering north", `Array.from(document.getElementById('cluster').options).some(o => o.value === 'north')`)

	// A global service served by two clusters, then the verdict filter.
	for _, c := range []string{"east", "west"} {
		f := flow("west/shop/frontend", c+"/shop/checkout", 8080, flowpb.Verdict_FORWARDED)
		f.DestinationService = &flowpb.Service{Namespace: "shop", Name: "checkout"}
		o.hub.Publish(f)
	}
	browsertest.WaitJS(t, b, 10*time.Second, "shop/checkout served by east and west",
		`Array.from(document.querySelectorAll('#services li.service')).some(li => li.dataset.service === 'shop/checkout' && li.textContent.endsWith('served by east, west'))`)
	browsertest.Eval[bool](t, b, `(() => { const s = document.getElementById('verdict'); s.value = 'DROPPED'; return s.dispatchEvent(new Event('change')); })()`)
	browsertest.WaitJS(t, b, 10*time.Second, "only the dropped edge with verdict DROPPED",
		edgeJS(allowed)+" === null && "+edgeJS(denied)+" !== null && document.querySelectorAll('path.edge').length === 1")

	if p := b.Problems(); len(p) != 0 {
		t.Errorf("the page's console: %q", p)
	}
}

// meshLoad publishes flows over 2,000 edges between 500 workloads of three
// clusters (one in ten dropped) until ctx ends.
func meshLoad(ctx context.Context, o observer, perSecond int) {
	clusters := []string{"east", "west", "north"}
	end := func(i int) string { return fmt.Sprintf("%s/ns-%d/w-%d", clusters[i%3], i%10, i) }
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; {
		for range perSecond / 100 {
			e := i % 2000
			v := flowpb.Verdict_FORWARDED
			if e%10 == 0 {
				v = flowpb.Verdict_DROPPED
			}
			o.hub.Publish(flow(end(e%500), end((e*7+1)%500), 8080+uint32(e/500), v))
			i++
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// TestFiguresUIFrame measures the page with 500 workloads and 2,000 edges
// updated four times a second, in headless Chromium without a GPU beside
// the server and 1,000 flows/s on the same cores: its frame time (a
// snapshot received to the task after the next frame, median and p99), its
// own work in that (parse and DOM update, median) and its JavaScript heap
// after a collection.
func TestFiguresUIFrame(t *testing.T) {
	figure.Require(t)
	b := browsertest.Start(t)
	o := startObserver(t)
	base, _ := startUI(t, o, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { meshLoad(ctx, o, 1000) })
	defer func() { cancel(); wg.Wait() }()

	browsertest.Navigate(t, b, base+"/?x=1")
	browsertest.WaitJS(t, b, 60*time.Second, "2,000 edges drawn", "window.__clustermesh && window.__clustermesh.edges === 2000 && window.__clustermesh.nodes === 500")
	browsertest.Eval[bool](t, b, "(window.__clustermesh.frames = [], true)")
	browsertest.WaitJS(t, b, 120*time.Second, "100 frames at 2,000 edges", "window.__clustermesh.frames.length >= 100")
	frames := browsertest.Eval[[]float64](t, b, "window.__clustermesh.frames")
	slices.Sort(frames)
	p50, p99 := frames[len(frames)/2], frames[len(frames)*99/100]
	renders := browsertest.Eval[[]float64](t, b, "window.__clustermesh.renderTimes")
	slices.Sort(renders)
	heap := browsertest.HeapMB(t, b)
	t.Logf("%d frames at 2,000 edges: p50 %.1f ms, p99 %.1f ms (the page's own work: p50 %.1f ms, p99 %.1f ms); heap %.1f MB",
		len(frames), p50, p99, renders[len(renders)/2], renders[len(renders)*99/100], heap)
	figure.Print("ui.frame.ms_at_2000_edges", round1(p50), "ms")
	figure.Print("ui.frame.p99_ms_at_2000_edges", round1(p99), "ms")
	figure.Print("ui.render.ms_at_2000_edges", round1(renders[len(renders)/2]), "ms")
	figure.Print("ui.heap.mb_at_2000_edges", round1(heap), "MB")
	if p := b.Problems(); len(p) != 0 {
		t.Errorf("the page's console: %q", p)
	}
}

func round1(v float64) float64 { return float64(int(v*10+0.5)) / 10 }
