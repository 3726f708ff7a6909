package localmesh

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/statesource"
)

// TestFiguresCache measures the cache's figures (make bench) on one mesh
// of cacheFigureClusters clusters of cacheFigurePods pods, in memory, east
// with a cache and an agent, the others with their apiserver only:
// propagation of one change through the cache (two hops) and directly, as
// ratios to raw put→watch on the remote's etcd, all from the same puts;
// and a cache restart: entries that left the agent's datapath at any
// moment (every write watched) and the time until the cache resynced.
func TestFiguresCache(t *testing.T) {
	figure.Require(t)
	const clusters, pods = cacheFigureClusters, cacheFigurePods
	w := newRemovalWatch()
	// Only east runs a cache and an agent: the figures load one cluster,
	// as the scale rig will.
	m := bigCachedMesh(t, clusters, pods, w, func(o *Options) { o.CacheClusters, o.AgentClusters = []string{"east"}, []string{"east"} })
	t.Logf("%d clusters of %d pods (east's agent holds %d remote ipcache entries)", clusters, pods, (clusters-1)*pods)

	figureCachePropagation(t, m, w)

	before := len(w.removals())
	took := restartCache(t, m)
	removed := len(w.removals()) - before
	figure.Print("cache.restart.removed", float64(removed), "entries")
	figure.Print("cache.restart.resync_s", took.Seconds(), "s")
	t.Logf("cache restart: %d entries removed, resynced %d remotes × %d pods in %s", removed, clusters-1, pods, took)
}

const (
	cacheFigureClusters = 5
	cacheFigurePods     = 25000
)

// startDirectAgent runs an agent of cluster from reading remote to directly
// (not through from's cache), on dp.
func startDirectAgent(t *testing.T, m *Mesh, from, to string, dp *removalWatch) *agentsync.Agent {
	t.Helper()
	f, r := m.Cluster(from), m.Cluster(to)
	dir := filepath.Join(t.TempDir(), "direct")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := f.writeRemoteConfig(dir, to, r.Address()); err != nil {
		t.Fatal(err)
	}
	a, err := agentsync.New(agentsync.Config{ClusterName: f.Name, ClusterID: f.ID, ConfigDir: dir, Datapath: dp,
		LocalSource:   &statesource.File{Path: f.StateFile, PollInterval: 200 * time.Millisecond, Logger: m.opts.Logger},
		ProbeInterval: 100 * time.Millisecond, BackoffInitial: 50 * time.Millisecond, BackoffMax: time.Second, Logger: m.opts.Logger})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return a
}

// figureCachePropagation puts ipcache entries one at a time into cluster
// c2's etcd and times each until a raw watch on that etcd sees it, until
// an agent reading c2 directly has it in its datapath, and until east's
// agent, reading c2 through east's cache, has it.
func figureCachePropagation(t *testing.T, m *Mesh, cached *removalWatch) {
	direct := newRemovalWatch()
	d := startDirectAgent(t, m, "east", "c2", direct)
	testenv.WaitFor(t, 2*time.Minute, "the direct agent synced c2", func() bool {
		r, _ := d.RemoteStatus("c2")
		return r.Ready && r.Endpoints == cacheFigurePods
	})
	admin := adminClient(t, m.Cluster("c2"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const probes = "cilium/state/ip/v1/default/10.109.0."
	raw := admin.Watch(ctx, probes, clientv3.WithPrefix())
	drain := func(w *removalWatch) {
		for {
			select {
			case <-w.hits:
			default:
				return
			}
		}
	}
	drain(cached)
	drain(direct)
	wait := func(w *removalWatch, p netip.Prefix) time.Time {
		deadline := time.After(10 * time.Second)
		for {
			select {
			case got := <-w.hits:
				if got == p {
					w.mu.Lock()
					defer w.mu.Unlock()
					return w.seen[p]
				}
			case <-deadline:
				t.Fatalf("%s never reached the datapath", p)
			}
		}
	}
	const n = 250
	var rawLat, directLat, cacheLat []time.Duration
	for i := range n {
		ip := fmt.Sprintf("10.109.0.%d", i+1)
		p := netip.MustParsePrefix(ip + "/32")
		start := time.Now()
		if _, err := admin.Put(ctx, probes+fmt.Sprint(i+1), fmt.Sprintf(`{"IP":%q,"HostIP":"192.168.2.1","ID":131077}`, ip)); err != nil {
			t.Fatal(err)
		}
		<-raw
		rawLat = append(rawLat, time.Since(start))
		directLat = append(directLat, wait(direct, p).Sub(start))
		cacheLat = append(cacheLat, wait(cached, p).Sub(start))
	}
	raw99, direct99, cache99 := percentile(rawLat, 0.99), percentile(directLat, 0.99), percentile(cacheLat, 0.99)
	figure.Print("cache.propagation.p99_ratio", float64(cache99)/float64(raw99), "ratio")
	figure.Print("cache.propagation.direct_p99_ratio", float64(direct99)/float64(raw99), "ratio")
	t.Logf("put→watch p50 %.3f p99 %.3f ms; direct p50 %.3f p99 %.3f ms; through the cache p50 %.3f p99 %.3f ms",
		ms(percentile(rawLat, 0.5)), ms(raw99), ms(percentile(directLat, 0.5)), ms(direct99), ms(percentile(cacheLat, 0.5)), ms(cache99))
}
