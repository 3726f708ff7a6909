package scalerig

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// cacheKinds are the kinds whose per-remote canaries a cache writes.
var cacheKinds = []string{"nodes", "identities", "ip", "services"}

// cacheFigures runs the reader's own apiserver and its kvstoremesh cache
// over every cluster of the rig: the cache's bootstrap, an agent's
// bootstrap through it, propagation through two hops, and a restart of the
// cache under a synced agent (nothing may leave its maps).
func cacheFigures(t *testing.T, rig *Rig, direct *bootstrap) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	reader, err := rig.StartReader(ctx, readerState())
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Proc.Kill()
	admin, err := reader.Admin()
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()

	start := time.Now()
	cache, err := rig.StartCache(reader, filepath.Join(rig.Dir, ReaderName, "cache.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cache.Kill() }()
	waitCanaries(t, ctx, admin, rig, 0, cache)
	cacheBoot := time.Since(start)
	cacheCPU, _ := cache.CPUSeconds()
	cacheRSS, _ := cache.RSS()
	t.Logf("cache: %d clusters cached in %.2f s, %.2f CPU-seconds, %d MiB resident", len(rig.Clusters),
		cacheBoot.Seconds(), cacheCPU, cacheRSS>>20)
	figure.Print("scale.cache.bootstrap_s", round(cacheBoot.Seconds(), 2), "s")
	figure.Print("scale.cache.cpu_s", round(cacheCPU, 2), "s")
	figure.Print("scale.cache.rss_mb", float64(cacheRSS>>20), "MiB")

	r, boot := bootstrapThrough(t, rig, reader)
	defer r.stop()
	t.Logf("through the cache: agent bootstrap %.2f s for %d remote entries, agent CPU %.2f s (direct: %.2f s)",
		boot.seconds, boot.entries, boot.cpu, direct.seconds)
	figure.Print("scale.bootstrap.cache_s", round(boot.seconds, 2), "s")
	figure.Print("scale.bootstrap.cache_cpu_s", round(boot.cpu, 2), "s")

	p99, raw99 := propagation(t, r, rig.Clusters[0], "through the cache")
	figure.Print("scale.propagation.cache_p99_ms", round(float64(p99.Microseconds())/1000, 3), "ms")
	figure.Print("scale.propagation.cache_p99_ratio", round(float64(p99)/float64(raw99), 2), "ratio")

	cache = restartCache(t, ctx, rig, reader, admin, r, cache)
}

// bootstrapThrough starts an agent reading every cluster through the
// reader's cache and times it until every entry is in its maps.
func bootstrapThrough(t *testing.T, rig *Rig, reader *Cluster) (*readerAgent, *bootstrap) {
	t.Helper()
	cpuBefore := selfCPU()
	start := time.Now()
	r := startReaderWith(t, t.TempDir(), func(dir string) error { return rig.WriteCachedConfigs(dir, reader) })
	var entries int
	testenv.WaitFor(t, 10*time.Minute, "every cluster synced at the agent through the cache", func() bool {
		ok, n := r.synced(len(rig.Clusters), Realistic.Endpoints)
		entries = n
		return ok
	})
	return r, &bootstrap{seconds: time.Since(start).Seconds(), cpu: selfCPU() - cpuBefore, entries: entries, datapath: r.dp.kind()}
}

// restartCache SIGKILLs the cache under the synced agent r and runs it
// again: the time until it has written every remote's canaries again, and
// what left r's maps meanwhile (nothing may). It returns the new cache.
func restartCache(t *testing.T, ctx context.Context, rig *Rig, reader *Cluster, admin *clientv3.Client, r *readerAgent, cache *Process) *Process {
	t.Helper()
	removedBefore := r.dp.removed()
	cache.Kill()
	resp, err := admin.Get(ctx, "cilium/.heartbeat")
	if err != nil {
		t.Fatal(err)
	}
	killedAt := resp.Header.Revision
	start := time.Now()
	cache, err = rig.StartCache(reader, filepath.Join(rig.Dir, ReaderName, "cache-2.log"))
	if err != nil {
		t.Fatal(err)
	}
	cpuBefore, _ := cache.CPUSeconds()
	waitCanaries(t, ctx, admin, rig, killedAt, cache)
	resync := time.Since(start)
	cpu, _ := cache.CPUSeconds()
	rss, _ := cache.RSS()
	removed := r.dp.removed() - removedBefore
	// The agent reads a cached remote's readiness from the cache's status,
	// every probe interval (1 s): a resync faster than that is seen by it
	// up to a probe later.
	var entries int
	testenv.WaitFor(t, 5*time.Second, "the agent synced with every cluster after the cache's restart", func() bool {
		ok, n := r.synced(len(rig.Clusters), Realistic.Endpoints)
		entries = n
		return ok
	})
	t.Logf("cache restart: every remote rewritten in %.2f s (%.2f CPU-seconds, %.1f cores on average, %d MiB resident); "+
		"%d entries left the agent's maps meanwhile; it holds %d remote entries", resync.Seconds(), cpu-cpuBefore,
		(cpu-cpuBefore)/resync.Seconds(), rss>>20, removed, entries)
	figure.Print("scale.cache_restart.removed", float64(removed), "entries")
	figure.Print("scale.cache_restart.resync_s", round(resync.Seconds(), 2), "s")
	figure.Print("scale.cache_restart.cores", round((cpu-cpuBefore)/resync.Seconds(), 2), "cores")
	return cache
}

// waitCanaries waits until the cache has written every cluster's canary of
// every kind after revision since (0: at all).
func waitCanaries(t *testing.T, ctx context.Context, admin *clientv3.Client, rig *Rig, since int64, cache *Process) {
	t.Helper()
	want := len(rig.Clusters) * len(cacheKinds)
	testenv.WaitFor(t, 15*time.Minute, "every cluster's canaries written by the cache", func() bool {
		if cache.Exited() {
			t.Fatalf("the cache exited: %s", cache.Tail(5))
		}
		resp, err := admin.Get(ctx, "cilium/synced/", clientv3.WithPrefix())
		if err != nil {
			return false
		}
		n := 0
		for _, kv := range resp.Kvs {
			if kv.ModRevision > since && isCacheCanary(string(kv.Key)) {
				n++
			}
		}
		return n >= want
	})
}

func isCacheCanary(key string) bool {
	for _, k := range cacheKinds {
		if len(key) > len(k) && filepath.Base(filepath.Dir(key)) == k && filepath.Base(key) == "v1" &&
			filepath.Base(filepath.Dir(filepath.Dir(key))) == "cache" {
			return true
		}
	}
	return false
}
