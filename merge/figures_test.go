package merge

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/figure"
)

// TestFiguresMerge prints the merger's figures at the scale rig's shape
// (bench_test.go): 100 clusters × 2,000 ipcache entries and 50 global
// services of 10 backends each.
func TestFiguresMerge(t *testing.T) {
	figure.Require(t)
	const n = 100
	best := time.Duration(1 << 62)
	for i := range 3 {
		w := newSlotWriter()
		m := benchMerger(w)
		start := time.Now()
		benchBootstrap(m, n, rand.New(rand.NewPCG(1, uint64(i))), false)
		best = min(best, time.Since(start))
		m.Close()
		if i == 0 {
			figure.Print("merge.services_bootstrap_100.slot_writes", float64(w.slots), "slots")
		}
	}
	figure.Print("merge.services_bootstrap_100.s", round3(best.Seconds()), "s")

	res := testing.Benchmark(func(b *testing.B) { benchArrival(b, n) })
	figure.Print("merge.service_arrival_100.us", round3(float64(res.NsPerOp())/1e3), "µs")

	for _, window := range []time.Duration{0, DefaultCoalesceServices} {
		slots, upserts := pacedBootstrap(n, window, 3*time.Second)
		name := fmt.Sprintf("merge.paced_bootstrap_100.coalesce_%dms", window.Milliseconds())
		figure.Print(name+".slot_writes", float64(slots), "slots")
		figure.Print(name+".service_writes", float64(upserts), "writes")
	}

	before := benchHeap()
	m := benchMerger(nullWriter{})
	benchBootstrap(m, n, rand.New(rand.NewPCG(1, 2)), true)
	m.Close()
	figure.Print("merge.memory.bytes_per_ipcache_entry", float64((benchHeap()-before)/(n*benchEndpoints)), "B")
	t.Logf("%d services", len(m.remoteSvcs)) // keeps m alive past the measure
}

// pacedBootstrap spreads n clusters' services over d, as clusters
// connecting at once deliver them, and counts the service slots and writes.
func pacedBootstrap(n int, window, d time.Duration) (slots, upserts int) {
	w := newSlotWriter()
	m := benchMerger(w)
	m.co.window = window
	order := rand.New(rand.NewPCG(3, 3)).Perm(n)
	pace := time.NewTicker(d / time.Duration(n)) // one cluster per tick
	defer pace.Stop()
	for _, c := range order {
		id := c + 1
		m.SetNodeRanges(uint16(id), nil, benchRanges(id))
		for s := range benchServices {
			m.SetRemoteService(benchCluster(id).Name, ServiceName{"bulk", fmt.Sprintf("svc-%d", s)}, benchService(id, s, false))
		}
		<-pace.C
	}
	m.Close() // waits for the trailing writes
	return w.slots, w.svcUp
}

func round3(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }
