package datapath

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
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
