package flowmap

import (
	"fmt"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// meshFlows are flows of 500 workloads over 2,000 edges in three clusters,
// one in ten dropped.
func meshFlows(n int) []*flowpb.Flow {
	clusters := []string{"east", "west", "north"}
	ends := make([]*flowpb.Endpoint, 500)
	for i := range ends {
		ends[i] = pod(clusters[i%3], fmt.Sprintf("ns-%d", i%10), fmt.Sprintf("w-%d-abc", i), fmt.Sprintf("w-%d", i))
	}
	fs := make([]*flowpb.Flow, n)
	for i := range fs {
		e := i % 2000
		v := flowpb.Verdict_FORWARDED
		if i%10 == 0 {
			v = flowpb.Verdict_DROPPED
		}
		fs[i] = tcp(t0.Add(time.Duration(i)*time.Millisecond), ends[e%500], ends[(e*7+1)%500], 8080+uint32(e/500), v)
	}
	return fs
}

// BenchmarkAdd is one flow into a map of 2,000 edges.
func BenchmarkAdd(b *testing.B) {
	fs := meshFlows(20000)
	m := New(Config{})
	for _, f := range fs {
		m.Add(f)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		m.Add(fs[i%len(fs)])
	}
}

// BenchmarkSnapshot is a snapshot of 500 workloads and 2,000 edges.
func BenchmarkSnapshot(b *testing.B) {
	m := New(Config{})
	for _, f := range meshFlows(20000) {
		m.Add(f)
	}
	now := t0.Add(20 * time.Second)
	if s := m.Snapshot(now, Query{}); len(s.Edges) != 2000 {
		b.Fatalf("%d edges, want 2000", len(s.Edges))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		m.Snapshot(now, Query{})
	}
}
