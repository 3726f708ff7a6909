package agentsync

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"runtime"
	"testing"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/merge"
	"github.com/clustermesh/clustermesh/wire"
)

// nopSink takes the stores' merges and keeps nothing: what is measured is
// the stores' own memory.
type nopSink struct{}

func (nopSink) SetIPs(uint16, []merge.IPUpdate)                                  {}
func (nopSink) SetRemoteService(string, merge.ServiceName, *merge.RemoteService) {}
func (nopSink) SetNodeRanges(uint16, []netip.Prefix, []netip.Prefix)             {}
func (nopSink) OverlapsLocal(netip.Prefix) bool                                  { return false }

func memRemote(tb testing.TB) *remote {
	tb.Helper()
	a, err := New(Config{ClusterName: "east", ClusterID: 1, ConfigDir: tb.TempDir(), LocalSource: nopSource{},
		Datapath: datapath.NewMemory(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		tb.Fatal(err)
	}
	r := newRemote(a, "west", RemoteConfig{}, nil)
	r.out = nopSink{}
	r.setConnected(lwWest, 0, layout{})
	return r
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkIPCacheStoreMemory: the heap one remote's ipcache store holds
// per entry (its prefix → pod map and the pods' names), 2,000 entries of a
// realistic remote, as the scale rig's clusters have (B/entry).
func BenchmarkIPCacheStoreMemory(b *testing.B) {
	const n = 2000
	vals := make([][]byte, n)
	keys := make([]string, n)
	for i := range n {
		ip := fmt.Sprintf("10.2.%d.%d", i/250, 1+i%250)
		keys[i] = wire.IPCacheKey(ip)
		vals[i] = fmt.Appendf(nil, `{"IP":%q,"HostIP":"192.168.2.%d","ID":%d,"K8sNamespace":"ns-%d","K8sPodName":"app-%d-7d9f8b6c5d-%05d","clustermesh.io/workload":"Deployment/app-%d"}`,
			ip, i%20, 131100+i%200, i%10, i%200, i, i%200)
	}
	b.ReportAllocs()
	var perEntry float64
	for range b.N {
		rs := make([]*remote, 10)
		for j := range rs {
			rs[j] = memRemote(b)
			s := rs[j].kinds[wire.IPCache].store.(*ipcacheStore)
			s.begin()
			for i := range n {
				if err := s.apply(keys[i], vals[i], 1); err != nil {
					b.Fatal(err)
				}
			}
			s.flush()
			s.sweep(1) // the list's end
		}
		base := heapInUse()
		for j := range rs {
			rs[j].kinds[wire.IPCache].store.clear()
		}
		after := heapInUse()
		perEntry = float64(base-after) / float64(len(rs)*n)
		runtime.KeepAlive(rs)
	}
	b.ReportMetric(perEntry, "B/entry")
}

// BenchmarkIdentityStoreMemory: the heap one remote's identity store holds
// per identity, 200 identities of a realistic remote (B/identity).
func BenchmarkIdentityStoreMemory(b *testing.B) {
	const n = 200
	first, _ := wire.IdentityRange(lwWest.ID, lwWest.MaxConnectedClusters)
	keys := make([]string, n)
	vals := make([][]byte, n)
	for i := range n {
		id := wire.Identity{ID: first + uint32(i), Labels: wire.NewLabels("k8s", map[string]string{
			"app": fmt.Sprintf("app-%d", i), "io.kubernetes.pod.namespace": fmt.Sprintf("ns-%d", i%10),
			"io.cilium.k8s.policy.cluster": lwWest.Name, "io.cilium.k8s.policy.serviceaccount": "default",
			"io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": fmt.Sprintf("ns-%d", i%10)})}
		keys[i], vals[i] = wire.IdentityKey(id.ID), wire.EncodeIdentity(id)
	}
	b.ReportAllocs()
	var perID float64
	for range b.N {
		rs := make([]*remote, 10)
		for j := range rs {
			rs[j] = memRemote(b)
		}
		before := heapInUse()
		for j := range rs {
			s := rs[j].kinds[wire.Identities].store
			for i := range n {
				if err := s.apply(keys[i], vals[i], 1); err != nil {
					b.Fatal(err)
				}
			}
		}
		after := heapInUse()
		perID = float64(after-before) / float64(len(rs)*n)
		runtime.KeepAlive(rs)
	}
	b.ReportMetric(perID, "B/identity")
}
