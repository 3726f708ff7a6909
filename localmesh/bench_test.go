package localmesh

import (
	"context"
	"io"
	"log/slog"
	"sort"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

func quietMesh(b *testing.B, clusters, agents int) *Mesh {
	b.Helper()
	var specs []ClusterSpec
	for i := 0; i < clusters; i++ {
		specs = append(specs, ClusterSpec{Name: names[i], ID: uint32(i + 1), State: SampleState(i + 1)})
	}
	m, err := Start(context.Background(), Options{Dir: b.TempDir(), Clusters: specs, AgentsPerCluster: agents,
		ProbeInterval: 100 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return m
}

// BenchmarkRemotePropagation measures one backend change in west's state
// file until east's agent's service map reflects it (east's own backends are
// unready, so it selects west's). It includes the state file's poll interval
// (inotify; polling every 200 ms as a safety net), the apiserver's publish, the etcd watch and the in-memory
// datapath's write.
func BenchmarkRemotePropagation(b *testing.B) {
	m := quietMesh(b, 2, 1)
	testenv.WaitFor(b, wait, "mesh ready", func() bool { return allReady(m) })
	east, west := m.Cluster("east"), m.Cluster("west")
	st := SampleState(1)
	SetReady(st, "checkout", false)
	if err := east.WriteState(st); err != nil {
		b.Fatal(err)
	}
	a := east.Agents[0]
	waitBackends := func(want int) {
		testenv.WaitFor(b, wait, "east selects west's backends", func() bool {
			svcs, _ := a.Datapath.Services()
			return len(svcs[checkoutFrontend]) == want
		})
	}
	waitBackends(3)
	full, fewer := SampleState(2), SampleState(2)
	fewer.Endpoints = fewer.Endpoints[1:]
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st, want := fewer, 2
		if i%2 == 1 {
			st, want = full, 3
		}
		start := time.Now()
		if err := west.WriteState(st); err != nil {
			b.Fatal(err)
		}
		waitBackends(want)
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99_ms")
}

// BenchmarkMeshStartup measures starting three clusters with two agents each
// until every agent has every remote fully synced.
func BenchmarkMeshStartup(b *testing.B) {
	var total time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		m := quietMesh(b, 3, 2)
		testenv.WaitFor(b, wait, "mesh ready", func() bool { return allReady(m) })
		total += time.Since(start)
		b.StopTimer()
		m.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms_to_synced")
}
