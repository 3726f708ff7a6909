package meshapiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// hundredThousandEndpoints is a cluster of 100,000 endpoints on 500 nodes, with 10,000
// identities and 1,000 global services of 10 backends each (the scale
// rig's big cluster).
func hundredThousandEndpoints() *statesource.State {
	st := &statesource.State{}
	for n := range 500 {
		st.Nodes = append(st.Nodes, statesource.Node{Name: fmt.Sprint("node-", n),
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{172, 16, byte(n / 250), byte(n%250 + 1)})}})
	}
	for i := range 100000 {
		st.Endpoints = append(st.Endpoints, &statesource.Endpoint{Namespace: "bulk", Pod: fmt.Sprint("pod-", i),
			Node: fmt.Sprint("node-", i%500), IP: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}),
			Labels: map[string]string{"app": fmt.Sprint("app-", i%10000)}})
	}
	for s := range 1000 {
		st.Services = append(st.Services, statesource.Service{Namespace: "bulk", Name: fmt.Sprint("svc-", s),
			ClusterIP: netip.AddrFrom4([4]byte{10, 200, byte(s >> 8), byte(s)}), Ports: []statesource.ServicePort{{Port: 80}},
			Selector: map[string]string{"app": fmt.Sprint("app-", s)}, Annotations: map[string]string{wire.AnnotationGlobal: "true"}})
	}
	return st
}

// BenchmarkOneEndpointChange: one endpoint added to or removed from a
// cluster of 100,000 endpoints, from the delivered state to the keys to
// write: the whole state's desired entries and their difference from what
// is published (full), or only what the change touches (incremental).
// The scoped variants export only what backs a global service (a tenth of
// the endpoints) and publish the local view of every endpoint beside it.
func BenchmarkOneEndpointChange(b *testing.B) {
	for _, mode := range []string{"full", "incremental"} {
		b.Run(mode, func(b *testing.B) { benchOneEndpointChange(b, mode == "incremental", ExportAll) })
	}
	for _, mode := range []string{"full", "incremental"} {
		b.Run(mode+"-scoped", func(b *testing.B) { benchOneEndpointChange(b, mode == "incremental", ExportGlobalServices) })
	}
}

// TestFiguresOneEndpointChange prints BenchmarkOneEndpointChange's figures.
func TestFiguresOneEndpointChange(t *testing.T) {
	figure.Require(t)
	for _, mode := range []string{"full", "incremental"} {
		r := testing.Benchmark(func(b *testing.B) { benchOneEndpointChange(b, mode == "incremental", ExportAll) })
		figure.Print("apiserver.endpoint_change_100k."+mode+"_ms", float64(r.NsPerOp())/1e6, "ms")
	}
}

func benchOneEndpointChange(b *testing.B, incremental bool, export ExportMode) {
	c := wire.Cluster{Name: "west", ID: 2, MaxConnectedClusters: 255}
	base := hundredThousandEndpoints()
	with := *base
	with.Endpoints = append(append([]*statesource.Endpoint(nil), base.Endpoints...), &statesource.Endpoint{Namespace: "bulk",
		Pod: "probe", Node: "node-0", IP: netip.MustParseAddr("10.250.0.1"), Labels: map[string]string{"app": "app-0"}})
	with.Changes = &statesource.Changes{Endpoints: with.Endpoints[len(with.Endpoints)-1:]}
	back := *base
	back.Changes = &statesource.Changes{RemovedEndpoints: []string{"bulk/probe"}}
	states := []*statesource.State{&with, &back}
	ids, err := newIdentityAllocator(context.Background(), nil, c)
	if err != nil {
		b.Fatal(err)
	}
	cache := newEndpointCache()
	published, _, _, err := desired(c, base, export, ids, cache)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st := states[i%2]
		if incremental {
			d, _, _, ok, err := desiredChanges(c, st, export, ids, cache)
			if err != nil || !ok {
				b.Fatal(ok, err)
			}
			applyDelta(published, d)
			continue
		}
		want, _, _, err := desired(c, st, export, ids, cache)
		if err != nil {
			b.Fatal(err)
		}
		if n := diffCount(published, want); n == 0 {
			b.Fatal("the change changed nothing")
		}
		published = want
	}
}

// applyDelta is what publishChanges does to what is published.
func applyDelta(published desiredKV, d endpointDelta) {
	for k, v := range d.puts {
		if !bytes.Equal(published[k], v) {
			published[k] = v
		}
	}
	for k := range d.dels {
		delete(published, k)
	}
}

// diffCount is what publish compares: the keys to write or delete.
func diffCount(published, want desiredKV) int {
	n := 0
	for k, v := range want {
		if !bytes.Equal(published[k], v) {
			n++
		}
	}
	for k := range published {
		if _, ok := want[k]; !ok {
			n++
		}
	}
	return n
}

// BenchmarkStateFileChangeToEtcd: one endpoint added to or removed from the
// state file of a cluster of 200 endpoints or of 100,000 (the scale rig's
// big cluster), from the rename of the new file into place to its ipcache
// key changed in etcd, through a running apiserver: the file source, the
// publisher and etcd (ns/change: the event's arrival is timed apart from
// the rename, which, replacing a file of megabytes nobody holds open, also
// frees its pages in the writer, in parallel with the apiserver's work;
// ns/op has both).
func BenchmarkStateFileChangeToEtcd(b *testing.B) {
	for _, n := range []int{200, 100000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) { benchStateFileChange(b, n) })
	}
}

func benchStateFileChange(b *testing.B, n int) {
	f := newFixture(b)
	base := hundredThousandEndpoints()
	base.Endpoints = base.Endpoints[:n]
	probe := &statesource.Endpoint{Namespace: "bulk", Pod: "probe", Node: "node-0",
		IP: netip.MustParseAddr("10.250.0.1"), Labels: map[string]string{"app": "app-0"}}
	with := *base
	with.Endpoints = append(slices.Clone(base.Endpoints), probe)
	f.state = filepath.Join(f.dir, "east.json")
	writeState(b, f.state, base)
	var contents [2][]byte
	for i, st := range []*statesource.State{&with, base} {
		c, err := json.Marshal(st)
		if err != nil {
			b.Fatal(err)
		}
		contents[i] = c
	}
	f.start(b, "127.0.0.1:0")
	admin := clientFor(b, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	ctx, cancel := context.WithCancel(context.Background())
	watch := admin.Watch(ctx, wire.IPCacheKey(probe.IP.String()))
	arrived := make(chan time.Time, 1)
	go func() {
		defer close(arrived)
		for range watch {
			arrived <- time.Now()
		}
	}()
	defer func() {
		cancel()
		for range arrived {
		}
	}()
	var total time.Duration
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		tmp := f.state + ".next"
		if err := os.WriteFile(tmp, contents[i%2], 0o600); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		if err := os.Rename(tmp, f.state); err != nil {
			b.Fatal(err)
		}
		at, ok := <-arrived
		if !ok {
			b.Fatal("watch ended")
		}
		total += at.Sub(start)
		lat = append(lat, at.Sub(start))
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/change")
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns/change")
}
