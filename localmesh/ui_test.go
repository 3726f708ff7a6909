package localmesh

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/clustermesh/clustermesh/internal/browsertest"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/ui"
)

// uiScreenshot is where TestUIMapInBrowser writes the page when
// CLUSTERMESH_UI_SCREENSHOT=1 (make ui-screenshot).
const uiScreenshot = "../docs/ui-map.png"

// startMeshUI starts the policy environment with every cluster's node-1
// observing, a relay of the whole mesh (found through east's peer
// service) on a unix socket, and `clustermesh ui`'s server following the
// relay on a loopback port; it returns the page's URL.
func startMeshUI(t *testing.T) (*policyEnv, string) {
	e := startPolicyEnvWith(t, true, nil)
	waitObserving(t, e)
	sock := filepath.Join(t.TempDir(), "relay.sock")
	stop, err := e.mesh.StartRelay(context.Background(), "east", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("relay: %v", err)
		}
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := ui.New(ui.Config{Client: observerpb.NewObserverClient(conn)})
	runUntilCleanup(t, "ui", func(ctx context.Context) error { return srv.Run(ctx, ln) })
	return e, "http://" + ln.Addr().String() + "/"
}

// runUntilCleanup runs fn until the test ends, then waits for it: registered after
// what it uses, it stops before them.
func runUntilCleanup(t *testing.T, what string, fn func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var err error
	wg.Go(func() { err = fn(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	})
}

// edgeOf is a JavaScript expression: the page's edge element of id, or null.
func edgeOf(id string) string {
	return "document.querySelector('path.edge[data-id=" + strconv.Quote(id) + "]')"
}

// TestUIMapInBrowser: headless Chromium on the map of a three-cluster mesh
// with real traffic through the relay: no console error; each cluster's
// workloads and the allowed edge appear; a new connection adds its edge
// live; north's connection, denied by east's policy, is drawn in the drop
// color, and its edge's list shows the dropped flow.
func TestUIMapInBrowser(t *testing.T) {
	b := browsertest.Start(t)
	e, page := startMeshUI(t)
	checkout := netip.AddrPortFrom(netip.MustParseAddr("10.1.1.12"), 8080)
	if err := connect(e.pods["west/frontend-1"], checkout, 3*time.Second); err != nil {
		t.Fatalf("west/frontend-1 → east checkout: %v, want allowed", err)
	}
	browsertest.Navigate(t, b, page)
	west := "west/shop/frontend -> east/shop/checkout 8080/TCP"
	browsertest.WaitJS(t, b, 20*time.Second, "west's edge to east's checkout", edgeOf(west)+" !== null")
	browsertest.WaitJS(t, b, 5*time.Second, "the workloads of west and east",
		`document.querySelector('g.node[data-id="west/shop/frontend"]') !== null && document.querySelector('g.node[data-id="east/shop/checkout"]') !== null`)

	if err := connect(e.pods["east/frontend-1"], checkout, 3*time.Second); err != nil {
		t.Fatalf("east/frontend-1 → east checkout: %v, want allowed", err)
	}
	local := "east/shop/frontend -> east/shop/checkout 8080/TCP"
	browsertest.WaitJS(t, b, 10*time.Second, "east's new edge, live", edgeOf(local)+" !== null && "+edgeOf(local)+".classList.contains('ok')")

	if err := connect(e.pods["north/frontend-1"], checkout, 300*time.Millisecond); err == nil {
		t.Fatal("north/frontend-1 → east checkout connected, want dropped")
	}
	north := "north/shop/frontend -> east/shop/checkout 8080/TCP"
	browsertest.WaitJS(t, b, 10*time.Second, "north's edge in the drop color", edgeOf(north)+" !== null && "+edgeOf(north)+".classList.contains('drop')")
	if c := browsertest.Eval[string](t, b, edgeOf(west)+".getAttribute('class')"); c != "edge ok" {
		t.Errorf("west's edge class %q after north's drop, want edge ok", c)
	}

	browsertest.Eval[bool](t, b, edgeOf(north)+".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
	browsertest.WaitJS(t, b, 10*time.Second, "north's dropped flow in the edge's list",
		`Array.from(document.querySelectorAll('#flows tr.flow')).some(tr => tr.dataset.verdict === 'DROPPED' && /north\/shop\/frontend-1:\d+ \(ID:\d+\) -> east\/shop\/checkout-2:8080/.test(tr.textContent))`)
	browsertest.WaitJS(t, b, 5*time.Second, "the three clusters offered", `['east', 'north', 'west'].every(c => Array.from(document.getElementById('cluster').options).some(o => o.value === c))`)
	if p := b.Problems(); len(p) != 0 {
		t.Errorf("the page's console: %q", p)
	}
	if os.Getenv("CLUSTERMESH_UI_SCREENSHOT") == "1" {
		if err := os.WriteFile(uiScreenshot, browsertest.Screenshot(t, b), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", uiScreenshot)
	}
}

// TestFiguresUIEdge measures a first packet on a new edge to the edge in
// the page: west's frontend connects to a new port of east's checkout
// (denied: a new edge each time) and the page records when each edge
// appeared.
func TestFiguresUIEdge(t *testing.T) {
	figure.Require(t)
	b := browsertest.Start(t)
	e, page := startMeshUI(t)
	browsertest.Navigate(t, b, page)
	browsertest.WaitJS(t, b, 10*time.Second, "the page's first snapshot", "window.__clustermesh && window.__clustermesh.renders > 0")
	const n = 40
	var lat []float64
	for i := range n {
		port := uint16(9000 + i)
		sent := time.Now()
		connect(e.pods["west/frontend-1"], netip.AddrPortFrom(netip.MustParseAddr("10.1.1.12"), port), 50*time.Millisecond) //nolint:errcheck // denied
		id := "west/shop/frontend -> east/shop/checkout " + strconv.Itoa(int(port)) + "/TCP"
		seen := "window.__clustermesh.seen[" + strconv.Quote(id) + "]"
		browsertest.WaitJS(t, b, 10*time.Second, "the edge to port "+strconv.Itoa(int(port)), seen+" !== undefined")
		at := browsertest.Eval[float64](t, b, seen)
		lat = append(lat, at-float64(sent.UnixNano())/1e6)
	}
	slices.Sort(lat)
	p50, p99 := lat[n/2], lat[n*99/100]
	t.Logf("%d new edges, first packet to the edge in the page: p50 %.0f ms, p99 %.0f ms, max %.0f ms", n, p50, p99, lat[n-1])
	figure.Print("ui.edge.p50_ms", float64(int(p50+0.5)), "ms")
	figure.Print("ui.edge.p99_ms", float64(int(p99+0.5)), "ms")
}
