package datapath

import (
	"math"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
	"github.com/clustermesh/clustermesh/internal/figure"
)

// Benchmarks of the eBPF implementation against the raw map update, so that
// the cost of the mirror and checks can be reported as a ratio.

func benchMaps(b *testing.B) *Maps {
	return openTestMaps(b, Config{PinDir: testPinDir(b)})
}

// benchPrefix returns the i-th /32 (distinct for i < 2^24).
func benchPrefix(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
}

func BenchmarkUpsertIPCache(b *testing.B) {
	m := benchMaps(b)
	e := IPCacheEntry{Identity: 1000, TunnelEndpoint: netip.MustParseAddr("192.168.0.1"), ClusterID: 1}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		e.Identity = uint32(i)
		if err := m.UpsertIPCache(benchPrefix(i%(1<<18)), e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawMapUpdate is the limit: ebpf.Map.Update on the same ipcache map
// with pre-encoded keys, no validation, no mirror, no lock.
func BenchmarkRawMapUpdate(b *testing.B) {
	m := benchMaps(b)
	v := makeIPCacheValue(IPCacheEntry{Identity: 1000, TunnelEndpoint: netip.MustParseAddr("192.168.0.1"), ClusterID: 1})
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		k := makeIPCacheKey(benchPrefix(i % (1 << 18)))
		v.Identity = uint32(i)
		if err := m.ipcache.Update(&k, &v, ebpf.UpdateAny); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpsertIPCacheBatch10k: one op is a batch of 10,000 changed entries.
func BenchmarkUpsertIPCacheBatch10k(b *testing.B) {
	m := benchMaps(b)
	const n = 10_000
	ps := make([]netip.Prefix, n)
	es := make([]IPCacheEntry, n)
	for i := range ps {
		ps[i] = benchPrefix(i)
		es[i] = IPCacheEntry{TunnelEndpoint: netip.MustParseAddr("192.168.0.1"), ClusterID: 1}
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		for j := range es {
			es[j].Identity = uint32(i)
		}
		if err := m.UpsertIPCacheBatch(ps, es); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "entries/s")
	if m.noBatch {
		b.Log("the ipcache refused BPF_MAP_UPDATE_BATCH: single updates were used")
	}
}

// BenchmarkUpsertService10: each op upserts one of 4096 frontends with 10
// backends never seen before: 10 backend writes, 10 slot writes and the
// master (21 map writes); once the frontends wrap round, the master stays and
// the 10 old backends are deleted instead.
func BenchmarkUpsertService10(b *testing.B) {
	m := benchMaps(b)
	bs := make([]Backend, 10)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		f := Frontend{Addr: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8 & 0xf), byte(i)}), Port: 80, Protocol: TCP}
		for j := range bs {
			bs[j] = Backend{Addr: netip.AddrFrom4([4]byte{10, 1, byte(j), 1}), Port: uint16(1 + i%60000), Protocol: TCP, ClusterID: 1}
		}
		if err := m.UpsertService(f, bs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawMapBatchUpdate10k is the limit for the batch: one
// ebpf.Map.BatchUpdate of 10,000 pre-encoded entries on the ipcache map.
func BenchmarkRawMapBatchUpdate10k(b *testing.B) {
	m := benchMaps(b)
	const n = 10_000
	keys := make([]ipcacheKey, n)
	vals := make([]ipcacheValue, n)
	for i := range keys {
		keys[i] = makeIPCacheKey(benchPrefix(i))
		vals[i] = makeIPCacheValue(IPCacheEntry{TunnelEndpoint: netip.MustParseAddr("192.168.0.1"), ClusterID: 1})
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		for j := range vals {
			vals[j].Identity = uint32(i)
		}
		if _, err := m.ipcache.BatchUpdate(keys, vals, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "entries/s")
}

// TestFiguresMapsDump prints the figures of dumping large maps (make bench):
//
//   - datapath.ipcache.dump_100k.ms: Maps.IPCache over 100,000 prefixes
//     (half IPv4, half IPv6), median of 5;
//   - datapath.ipcache.dump_ratio: that against the raw batch lookup of the
//     same map without decoding (the kernel's share), measured alongside;
//   - datapath.services.dump_1000x10.ms: Maps.Services over 1,000 services
//     of 10 backends each, median of 5.
func TestFiguresMapsDump(t *testing.T) {
	figure.Require(t)
	m := openTestMaps(t, smallConfig(""))
	const n = 100_000
	ps, es := dumpTestIPCache(n)
	mustNoErr(t, m.UpsertIPCacheBatch(ps, es))
	dumpTestServices(t, m)
	median := func(f func()) time.Duration {
		ds := make([]time.Duration, 5)
		for i := range ds {
			start := time.Now()
			f()
			ds[i] = time.Since(start)
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	ours := median(func() {
		got, err := m.IPCache()
		mustNoErr(t, err)
		if len(got) != n {
			t.Fatalf("dumped %d entries, want %d", len(got), n)
		}
	})
	raw := median(func() {
		seen := 0
		mustNoErr(t, bpfmap.Dump(m.ipcache, func(*ipcacheKey, *ipcacheValue) { seen++ }))
		if seen != n {
			t.Fatalf("raw dump saw %d entries, want %d", seen, n)
		}
	})
	svcs := median(func() {
		got, err := m.Services()
		mustNoErr(t, err)
		if len(got) != 1000 {
			t.Fatalf("dumped %d services, want 1000", len(got))
		}
	})
	t.Logf("ipcache dump of %d: %v (raw batch lookup %v); 1000 services × 10: %v", n, ours, raw, svcs)
	figure.Print("datapath.ipcache.dump_100k.ms", float64(ours.Microseconds())/1000, "ms")
	figure.Print("datapath.ipcache.dump_ratio", math.Round(100*float64(ours)/float64(raw))/100, "ratio")
	figure.Print("datapath.services.dump_1000x10.ms", float64(svcs.Microseconds())/1000, "ms")
}

// TestFiguresReconcile prints lb.reconcile.slots_per_s (make bench):
// UpsertService of 10,000 frontends × 10 distinct backends into fresh maps
// (default sizes), the writes the socket load balancer's services cost.
// Goal ≥ 200,000.
func TestFiguresReconcile(t *testing.T) {
	figure.Require(t)
	m := openTestMaps(t, Config{PinDir: testPinDir(t)})
	const services, per = 10_000, 10
	fs, bss := reconcileInput(services, per)
	start := time.Now()
	for i, f := range fs {
		if err := m.UpsertService(f, bss[i]); err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(start)
	rate := float64(services*per) / took.Seconds()
	t.Logf("%d services × %d backends in %v", services, per, took.Round(time.Millisecond))
	figure.Print("lb.reconcile.slots_per_s", float64(int(rate)), "slots/s")
}

// reconcileInput returns n frontends with per distinct backends each.
func reconcileInput(n, per int) ([]Frontend, [][]Backend) {
	fs := make([]Frontend, n)
	bss := make([][]Backend, n)
	for i := range fs {
		fs[i] = Frontend{Addr: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Port: 80, Protocol: TCP}
		bs := make([]Backend, per)
		for j := range bs {
			k := i*per + j
			bs[j] = Backend{Addr: netip.AddrFrom4([4]byte{10, 1 + byte(k>>16), byte(k >> 8), byte(k)}), Port: 8080, Protocol: TCP, ClusterID: uint16(1 + j%3)}
		}
		bss[i] = bs
	}
	return fs, bss
}

// BenchmarkUpsertServiceFromScratch: one op is UpsertService of a new
// frontend with 10 new backends, into maps holding up to 10,000 such
// services (then they are deleted and the round starts again).
func BenchmarkUpsertServiceFromScratch(b *testing.B) {
	m := openTestMaps(b, Config{PinDir: testPinDir(b)})
	const services, per = 10_000, 10
	fs, bss := reconcileInput(services, per)
	i := 0
	for b.Loop() {
		if i == services {
			b.StopTimer()
			for _, f := range fs {
				mustNoErr(b, m.DeleteService(f))
			}
			i = 0
			b.StartTimer()
		}
		if err := m.UpsertService(fs[i], bss[i]); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(per*b.N)/b.Elapsed().Seconds(), "slots/s")
}
