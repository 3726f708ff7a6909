package merge

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// The benchmarks model the scale rig's reader agent (internal/scalerig):
// the local cluster has 50 global services without endpoints, and each of
// N remote clusters (ids 1..N) has 20 nodes, the first owning 10.id.0.0/16,
// 2,000 ipcache entries in it and 10 backends in each of the 50 services.

const (
	benchServices    = 50
	benchBackendsPer = 10
	benchEndpoints   = 2000
	benchNodes       = 20
	benchLocalID     = 255
)

// slotWriter is a datapath that keeps nothing but what the eBPF maps would
// cost: it counts the service slots a write changes (the maps rewrite only
// those) and the ipcache entries written, and drops the entries.
type slotWriter struct {
	svcs         map[datapath.Frontend][]datapath.Backend
	slots, svcUp int
	ipWrites     int
}

func newSlotWriter() *slotWriter {
	return &slotWriter{svcs: map[datapath.Frontend][]datapath.Backend{}}
}

func (w *slotWriter) UpsertService(f datapath.Frontend, bs []datapath.Backend) error {
	old := w.svcs[f]
	for i, b := range bs {
		if i >= len(old) || old[i] != b {
			w.slots++
		}
	}
	w.slots += max(len(old)-len(bs), 0) // surplus slots deleted
	w.svcs[f] = append(old[:0], bs...)
	w.svcUp++
	return nil
}

func (w *slotWriter) DeleteService(f datapath.Frontend) error {
	w.slots += len(w.svcs[f])
	delete(w.svcs, f)
	return nil
}

func (w *slotWriter) UpsertIPCache(netip.Prefix, datapath.IPCacheEntry) error {
	w.ipWrites++
	return nil
}
func (w *slotWriter) DeleteIPCache(netip.Prefix) error { w.ipWrites++; return nil }
func (w *slotWriter) UpsertIPCacheBatch(ps []netip.Prefix, _ []datapath.IPCacheEntry) error {
	w.ipWrites += len(ps)
	return nil
}

// nullWriter is a datapath that keeps nothing: the merger's memory is
// measured alone.
type nullWriter struct{}

func (nullWriter) UpsertService(datapath.Frontend, []datapath.Backend) error        { return nil }
func (nullWriter) DeleteService(datapath.Frontend) error                            { return nil }
func (nullWriter) UpsertIPCache(netip.Prefix, datapath.IPCacheEntry) error          { return nil }
func (nullWriter) DeleteIPCache(netip.Prefix) error                                 { return nil }
func (nullWriter) UpsertIPCacheBatch([]netip.Prefix, []datapath.IPCacheEntry) error { return nil }

// benchLocal is the reader's state: the global services, no endpoints.
func benchLocal() *statesource.State {
	st := &statesource.State{}
	for s := range benchServices {
		st.Services = append(st.Services, statesource.Service{Namespace: "bulk", Name: fmt.Sprintf("svc-%d", s),
			ClusterIP:   netip.AddrFrom4([4]byte{10, 255, byte(s >> 8), byte(s)}),
			Ports:       []statesource.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}},
			Selector:    map[string]string{"app": fmt.Sprintf("svc-%d", s)},
			Annotations: map[string]string{wire.AnnotationGlobal: "true"}})
	}
	return st
}

func benchCluster(id int) wire.Cluster {
	return wire.Cluster{Name: fmt.Sprintf("c%d", id), ID: uint32(id), MaxConnectedClusters: wire.DefaultMaxConnectedClusters}
}

func benchPodAddr(id, i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(id), byte((i + 1) >> 8), byte(i + 1)})
}

// benchRanges are cluster id's node ranges: the pod range and the node IPs.
func benchRanges(id int) []netip.Prefix {
	out := []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(id), 0, 0}), 16)}
	for n := range benchNodes {
		out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(id), byte(n + 1)}), 32))
	}
	return out
}

// benchService is cluster id's view of service s; bump moves its first
// backend to another address (a change).
func benchService(id, s int, bump bool) *RemoteService {
	cs := &wire.ClusterService{Cluster: fmt.Sprintf("c%d", id), ClusterID: uint32(id), Namespace: "bulk",
		Name: fmt.Sprintf("svc-%d", s), Shared: true, Backends: map[string]wire.PortConfiguration{}}
	for b := range benchBackendsPer {
		i := s*benchBackendsPer + b
		if bump && b == 0 {
			i = benchEndpoints - 1 - s
		}
		cs.Backends[benchPodAddr(id, i).String()] = wire.PortConfiguration{"http": {Protocol: "TCP", Port: 8080}}
	}
	return NewRemoteService(benchCluster(id), cs)
}

// benchIPs are cluster id's ipcache claims, in pages of 500.
func benchIPs(id int) [][]IPUpdate {
	var pages [][]IPUpdate
	var page []IPUpdate
	for i := range benchEndpoints {
		a := benchPodAddr(id, i)
		page = append(page, IPUpdate{Prefix: netip.PrefixFrom(a, 32), Entry: &datapath.IPCacheEntry{
			Identity: uint32(id)<<16 | uint32(256+i%200), TunnelEndpoint: netip.AddrFrom4([4]byte{192, 168, byte(id), byte(i%benchNodes + 1)}),
			ClusterID: uint16(id)}})
		if len(page) == 500 {
			pages, page = append(pages, page), nil
		}
	}
	return append(pages, page)
}

func benchMerger(w datapath.Writer) *Merger {
	m := New(Config{Datapath: w, ClusterName: "reader", ClusterID: benchLocalID, Logger: slog.New(slog.DiscardHandler)})
	m.SetLocal(benchLocal())
	return m
}

// benchBootstrap brings n clusters into m as the agent does when they all
// connect at once: each cluster's nodes, then its ipcache pages, then its
// services, the clusters interleaved in a random order.
func benchBootstrap(m *Merger, n int, rng *rand.Rand, withIPs bool) {
	type step struct{ id, kind, i int }
	var steps [][]step
	for id := 1; id <= n; id++ {
		var s []step
		s = append(s, step{id, 0, 0})
		if withIPs {
			for p := range len(benchIPs(id)) {
				s = append(s, step{id, 1, p})
			}
		}
		for svc := range benchServices {
			s = append(s, step{id, 2, svc})
		}
		steps = append(steps, s)
	}
	for len(steps) > 0 {
		c := rng.IntN(len(steps))
		st := steps[c][0]
		steps[c] = steps[c][1:]
		if len(steps[c]) == 0 {
			steps = append(steps[:c], steps[c+1:]...)
		}
		switch st.kind {
		case 0:
			m.SetNodeRanges(uint16(st.id), nil, benchRanges(st.id))
		case 1:
			m.SetIPs(uint16(st.id), benchIPs(st.id)[st.i])
		case 2:
			m.SetRemoteService(benchCluster(st.id).Name, ServiceName{"bulk", fmt.Sprintf("svc-%d", st.i)}, benchService(st.id, st.i, false))
		}
	}
}

// BenchmarkServiceBootstrap: N clusters' nodes and 50 services each
// arriving, interleaved, into a fresh merger (one op is the whole
// bootstrap); slots/op is what the eBPF service map would be written.
func BenchmarkServiceBootstrap(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("clusters=%d", n), func(b *testing.B) {
			slots, ups := 0, 0
			for i := range b.N {
				w := newSlotWriter()
				m := benchMerger(w)
				benchBootstrap(m, n, rand.New(rand.NewPCG(1, uint64(i))), false)
				m.Close()
				slots, ups = slots+w.slots, ups+w.svcUp
			}
			b.ReportMetric(float64(slots)/float64(b.N), "slots/op")
			b.ReportMetric(float64(ups)/float64(b.N), "upserts/op")
		})
	}
}

// BenchmarkRemoteServiceArrival: with N clusters merged, one cluster's
// update of one service (a backend moved): what one arrival costs.
func BenchmarkRemoteServiceArrival(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("clusters=%d", n), func(b *testing.B) { benchArrival(b, n) })
	}
}

func benchArrival(b *testing.B, n int) {
	w := newSlotWriter()
	m := benchMerger(w)
	defer m.Close()
	benchBootstrap(m, n, rand.New(rand.NewPCG(1, 2)), false)
	updates := make([][2]*RemoteService, n)
	for id := 1; id <= n; id++ {
		updates[id-1] = [2]*RemoteService{benchService(id, 7, false), benchService(id, 7, true)}
	}
	svc := ServiceName{"bulk", "svc-7"}
	w.slots = 0
	b.ResetTimer()
	for i := range b.N {
		id := 1 + i%n
		m.SetRemoteService(benchCluster(id).Name, svc, updates[id-1][(i/n+1)%2])
	}
	b.ReportMetric(float64(w.slots)/float64(b.N), "slots/op")
}

// BenchmarkSetIPs: one cluster's page of 500 ipcache claims, with 100
// clusters' ranges known; B/entry is the merger's heap per claim held.
func BenchmarkSetIPs(b *testing.B) {
	w := newSlotWriter()
	m := benchMerger(w)
	for id := 1; id <= 100; id++ {
		m.SetNodeRanges(uint16(id), nil, benchRanges(id))
	}
	pages := make([][][]IPUpdate, 100)
	for id := 1; id <= 100; id++ {
		pages[id-1] = benchIPs(id)
	}
	b.ResetTimer()
	for i := range b.N {
		id := 1 + (i/len(pages[0]))%100
		m.SetIPs(uint16(id), pages[id-1][i%len(pages[0])])
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*500)/b.Elapsed().Seconds(), "claims/s")
}

// BenchmarkIPCacheMemory: the merger's heap per ipcache claim held, 100
// clusters × 2,000 claims (B/entry).
func BenchmarkIPCacheMemory(b *testing.B) {
	var perEntry float64
	for range b.N {
		before := benchHeap()
		m := benchMerger(nullWriter{})
		benchBootstrap(m, 100, rand.New(rand.NewPCG(1, 2)), true)
		m.Close()
		after := benchHeap()
		perEntry = float64(after-before) / float64(100*benchEndpoints)
		runtime.KeepAlive(m)
	}
	b.ReportMetric(perEntry, "B/entry")
}

func benchHeap() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
