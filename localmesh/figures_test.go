package localmesh

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// TestFigures measures the sync issue's figures (make bench), each against
// the raw limit measured in the same run on the same etcd.
func TestFigures(t *testing.T) {
	figure.Require(t)
	testenv.RequireRoot(t) // the agent writes real eBPF maps
	t.Run("propagation", figurePropagation)
	t.Run("initial sync, memory and reconnect", figureInitialSync)
	t.Run("publish", figurePublish)
	t.Run("failover", figureFailover)
}

// watchedMaps signals every write of one prefix into real eBPF maps.
type watchedMaps struct {
	*datapath.Maps
	watch netip.Prefix
	hits  chan time.Time
}

func (w *watchedMaps) seen(ps ...netip.Prefix) {
	for _, p := range ps {
		if p == w.watch {
			select {
			case w.hits <- time.Now():
			default:
			}
		}
	}
}

func (w *watchedMaps) UpsertIPCache(p netip.Prefix, e datapath.IPCacheEntry) error {
	err := w.Maps.UpsertIPCache(p, e)
	w.seen(p)
	return err
}

func (w *watchedMaps) DeleteIPCache(p netip.Prefix) error {
	err := w.Maps.DeleteIPCache(p)
	w.seen(p)
	return err
}

func (w *watchedMaps) UpsertIPCacheBatch(ps []netip.Prefix, es []datapath.IPCacheEntry) error {
	err := w.Maps.UpsertIPCacheBatch(ps, es)
	w.seen(ps...)
	return err
}

func openTestMaps(t *testing.T) *datapath.Maps {
	t.Helper()
	pin := filepath.Join("/sys/fs/bpf", fmt.Sprintf("cm-figures-%d", time.Now().UnixNano()))
	m, err := datapath.OpenMaps(datapath.Config{PinDir: pin, NoIPCacheMirror: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); datapath.RemovePins(pin) })
	return m
}

func percentile(ds []time.Duration, p float64) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[int(float64(len(ds)-1)*p)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// figurePropagation: one endpoint appears or leaves in west's state file →
// the change is in east's agent's eBPF ipcache.
func figurePropagation(t *testing.T) {
	e := newFaultEnv(t)
	stateFile := filepath.Join(e.dir, "west.json")
	base := SampleState(2)
	writeJSON(t, stateFile, base)
	// West in its own process, as in a real mesh: its GC is not the agent's.
	spec := processSpec{Cluster: "west", ID: 2, Listen: freeAddr(t), CertDir: e.west.Dir, Peers: []string{"east"}, StateFile: stateFile}
	startAPIServerProcess(t, spec)
	addr := spec.Listen
	e.pointAt(t, addr)
	probe := netip.MustParsePrefix("10.2.2.250/32")
	dp := &watchedMaps{Maps: openTestMaps(t), watch: probe, hits: make(chan time.Time, 1)}
	a := e.startAgent(t, dp, nil)
	testenv.WaitFor(t, wait, "west synced", func() bool { return westOf(a).Ready })
	with := SampleState(2)
	with.Endpoints = append(with.Endpoints, &statesource.Endpoint{Namespace: "shop", Pod: "probe", Node: "node-2",
		IP: probe.Addr(), Labels: map[string]string{"app": "checkout"}})
	// Samples of ours and of raw etcd put→watch alternate, so that both see
	// the same machine.
	const n = 1000
	lat := make([]time.Duration, 0, n)
	raw := make([]time.Duration, 0, n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	admin := westAdmin(t, e, addr)
	rawWatch := admin.Watch(ctx, "cilium/raw-probe")
	for i := 0; i < n; i++ {
		start := time.Now()
		if _, err := admin.Put(ctx, "cilium/raw-probe", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		<-rawWatch
		raw = append(raw, time.Since(start))

		st := with
		if i%2 == 1 {
			st = base
		}
		// The change at the source is the rename of a file written
		// beforehand (as an operator's tool or a config manager does):
		// the clock starts there, not at our own JSON encoding.
		b, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(stateFile+".tmp", b, 0o600); err != nil {
			t.Fatal(err)
		}
		start = time.Now()
		if err := os.Rename(stateFile+".tmp", stateFile); err != nil {
			t.Fatal(err)
		}
		select {
		case at := <-dp.hits:
			lat = append(lat, at.Sub(start))
		case <-time.After(10 * time.Second):
			t.Fatalf("change %d never reached the map", i)
		}
	}
	p50, p99, raw99 := percentile(lat, 0.50), percentile(lat, 0.99), percentile(raw, 0.99)
	figure.Print("sync.propagation.p50_ms", ms(p50), "ms")
	figure.Print("sync.propagation.p99_ms", ms(p99), "ms")
	figure.Print("sync.propagation.p99_ratio", float64(p99)/float64(raw99), "ratio")
	t.Logf("raw etcd put→watch p50 %.3f ms, p99 %.3f ms", ms(percentile(raw, 0.5)), ms(raw99))
}

// figureInitialSync: a remote (a separate process) with 100k ipcache
// entries, ~10k identities and 1k services of 10 backends; the agent syncs
// it from scratch into real maps. Then the remote restarts (SIGKILL, a new
// empty store) and the agent resyncs.
func figureInitialSync(t *testing.T) {
	e := newFaultEnv(t)
	st := bigState(2, 100000, 9000, 1000, 10)
	stateFile := filepath.Join(e.dir, "west.json")
	writeJSON(t, stateFile, st)
	spec := processSpec{Cluster: "west", ID: 2, Listen: freeAddr(t), CertDir: e.west.Dir, Peers: []string{"east"}, StateFile: stateFile}
	p := startAPIServerProcess(t, spec)

	// The raw limit: a paginated list of the same keys, same page size.
	raw := westAdmin(t, e, spec.Listen)
	rawStart, rawKeys := time.Now(), 0
	for _, prefix := range []string{"cilium/state/nodes/v1/west/", "cilium/state/identities/v1/id/", "cilium/state/ip/v1/default/", "cilium/state/services/v1/west/"} {
		rawKeys += rawList(t, raw, prefix)
	}
	rawRate := float64(rawKeys) / time.Since(rawStart).Seconds()

	maps := openTestMaps(t)
	heapBefore := heapAlloc()
	e.pointAt(t, spec.Listen)
	start := time.Now()
	a := e.startAgent(t, maps, nil)
	testenv.WaitFor(t, 5*time.Minute, "west fully synced", func() bool { return westOf(a).Ready })
	took := time.Since(start)
	r := westOf(a)
	entries := r.Nodes + r.Endpoints + r.Identities + r.Services
	if r.Endpoints != 100000 || entries != rawKeys {
		t.Fatalf("synced %d ipcache entries, %d in all; the store has %d keys", r.Endpoints, entries, rawKeys)
	}
	rate := float64(entries) / took.Seconds()
	figure.Print("sync.initial.seconds", took.Seconds(), "s")
	figure.Print("sync.initial.throughput_ratio", rate/rawRate, "ratio")
	t.Logf("initial sync: %d entries in %s = %.0f entries/s; raw paginated list %.0f keys/s", entries, took, rate, rawRate)
	// The least of three readings after GC: what stays live, not what a
	// straggling goroutine happens to hold at one moment.
	after := heapAlloc()
	for i := 0; i < 2; i++ {
		after = min(after, heapAlloc())
	}
	perEntry := float64(int64(after)-int64(heapBefore)) / float64(r.Endpoints)
	figure.Print("sync.memory.bytes_per_entry", perEntry, "B")

	// Reconnect: the remote dies for good and comes back with an empty store
	// that it fills again; time from its restart to the agent synced again.
	p.kill()
	testenv.WaitFor(t, wait, "the agent noticed", func() bool { return !westOf(a).Connected })
	restart := time.Now()
	startAPIServerProcess(t, spec)
	published := time.Since(restart)
	testenv.WaitFor(t, 5*time.Minute, "west resynced", func() bool {
		r := westOf(a)
		return r.Ready && r.Connected && r.Endpoints == 100000
	})
	total := time.Since(restart)
	figure.Print("sync.reconnect.seconds", (total - published).Seconds(), "s")
	t.Logf("reconnect: the restarted apiserver republished in %s; the agent was synced %s after it (%s after the restart)",
		published, total-published, total)
}

func rawList(t *testing.T, cli *clientv3.Client, prefix string) int {
	end, key, rev, n := clientv3.GetPrefixRangeEnd(prefix), prefix, int64(0), 0
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(agentsync.DefaultListPageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(context.Background(), key, opts...)
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.Header.Revision
		n += len(resp.Kvs)
		if !resp.More {
			return n
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// figurePublish: the apiserver publishes 100k entries from its source, vs
// one put per key (64 concurrent writers) on the same store.
func figurePublish(t *testing.T) {
	e := newFaultEnv(t)
	st := bigState(2, 100000, 10, 0, 0)
	stateFile := filepath.Join(e.dir, "west.json")
	writeJSON(t, stateFile, st)
	addr := freeAddr(t)
	start := time.Now()
	srv := inProcessWestServer(t, e, addr, &statesource.File{Path: stateFile})
	admin := westAdmin(t, e, addr)
	testenv.WaitFor(t, 5*time.Minute, "canaries written", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		resp, err := admin.Get(ctx, "cilium/synced/west/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 4
	})
	took := time.Since(start)
	pub := srv.Status().Publish
	rate := float64(pub.LastWrites) / pub.LastWritesTook.Seconds()

	// The baseline of the goal, one put per key: a publisher that writes
	// each entry with its own put, one after the other, with the same
	// values, on a lease. Then, harder, the same puts from 64 concurrent
	// writers, where etcd batches concurrent proposals itself.
	value, err := wire.EncodeIPIdentityPair(&wire.IPIdentityPair{IP: netip.MustParseAddr("10.2.3.4"),
		HostIP: netip.MustParseAddr("192.168.2.1"), ID: 2<<16 + 7, K8sNamespace: "shop", K8sPodName: "checkout-7d9f8b6c5d-x2k4p"})
	if err != nil {
		t.Fatal(err)
	}
	lease, err := admin.Grant(context.Background(), 60)
	if err != nil {
		t.Fatal(err)
	}
	putRate := func(keys, writers int, prefix string) float64 {
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := next.Add(1); i <= int64(keys); i = next.Add(1) {
					if _, err := admin.Put(context.Background(), fmt.Sprintf("%s%d", prefix, i), string(value), clientv3.WithLease(lease.ID)); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		return float64(keys) / time.Since(start).Seconds()
	}
	seqRate := putRate(5000, 1, "cilium/raw/seq/")
	parRate := putRate(20000, 64, "cilium/raw/par/")
	figure.Print("sync.publish.entries_per_s", math.Round(rate), "entries/s")
	figure.Print("sync.publish.speedup", rate/seqRate, "ratio")
	figure.Print("sync.publish.speedup_vs_64_writers", rate/parRate, "ratio")
	t.Logf("published %d entries in %s (%.0f/s; %s from start, parse and etcd start-up included); one put per key: %.0f/s one at a time, %.0f/s from 64 writers",
		pub.LastWrites, pub.LastWritesTook, rate, took, seqRate, parRate)
}

// watchedServices signals every write of one frontend into real eBPF maps.
type watchedServices struct {
	*datapath.Maps
	watch datapath.Frontend
	hits  chan []datapath.Backend
}

func (w *watchedServices) UpsertService(f datapath.Frontend, bs []datapath.Backend) error {
	err := w.Maps.UpsertService(f, bs)
	if f == w.watch {
		select {
		case w.hits <- bs:
		default:
		}
	}
	return err
}

// TestFigures/failover (issue 4): the local source marks the last local
// backend unready → the service map selects the remote backends.
func figureFailover(t *testing.T) {
	e := newFaultEnv(t)
	addr := freeAddr(t)
	writeJSON(t, filepath.Join(e.dir, "west.json"), SampleState(2))
	inProcessWest(t, e, addr, &statesource.File{Path: filepath.Join(e.dir, "west.json")})
	e.pointAt(t, addr)
	up := SampleState(1)
	up.Endpoints = up.Endpoints[2:] // one checkout pod left (checkout-3)
	down := SampleState(1)
	down.Endpoints = down.Endpoints[2:]
	SetReady(down, "checkout", false)
	eastFile := filepath.Join(e.dir, "east.json")
	writeJSON(t, eastFile, up)
	checkout := datapath.Frontend{Addr: CheckoutIP, Port: 80, Protocol: datapath.TCP}
	dp := &watchedServices{Maps: openTestMaps(t), watch: checkout, hits: make(chan []datapath.Backend, 16)}
	a := e.startAgent(t, dp, nil)
	testenv.WaitFor(t, wait, "west synced", func() bool { return westOf(a).Ready })
	const n = 200
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		st, wantRemote := down, true
		if i%2 == 1 {
			st, wantRemote = up, false
		}
		for len(dp.hits) > 0 {
			<-dp.hits
		}
		start := time.Now()
		writeJSON(t, eastFile, st)
		for done := false; !done; {
			select {
			case bs := <-dp.hits:
				remote := len(bs) > 0 && bs[0].ClusterID != 1
				done = remote == wantRemote
			case <-time.After(10 * time.Second):
				t.Fatalf("change %d never reached the service map", i)
			}
		}
		if wantRemote {
			lat = append(lat, time.Since(start))
		}
	}
	figure.Print("lb.failover.p99_ms", ms(percentile(lat, 0.99)), "ms")
	t.Logf("failover (last local backend unready → remote selected): p50 %.3f ms, p99 %.3f ms over %d", ms(percentile(lat, 0.5)), ms(percentile(lat, 0.99)), len(lat))
}
