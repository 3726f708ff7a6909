package tcpolicy

import (
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/datapath/internal/dptest"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// What the flow events cost the policy programs: the same packet with
// every event off, and with the demo's configuration (policy verdicts,
// every new flow traced, every packet sampled).
var (
	eventsOff = flows.Config{ClusterID: 1}
	eventsOn  = flows.Config{ClusterID: 1, PolicyVerdicts: true, TraceNew: true, SampleRate: 1}
)

// eventsBench is the figures' setting (figuresPolicyTc's: 100,000 ipcache
// entries, 10,000 policy entries) with a reader draining the events.
type eventsBench struct {
	m       *Programs
	progs   *testPolicyProgs
	allowed []byte // an established, allowed TCP flow's packet
	denied  []byte
	read    func() uint64
}

func newEventsBench(t testing.TB) *eventsBench {
	mesh, m := openDefault(t)
	addrs := benchIPCache(t, mesh, 100_000)
	benchPolicy(t, m, 10_000)
	b := &eventsBench{m: m, progs: loadTestPolicyProgs(t, m)}
	setTestEndpoint(t, m, 1, 0x10001, true, true)
	src := netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), 40000)
	b.allowed = testPacket(src, netip.AddrPortFrom(addrs[0], 80), datapath.TCP, 0x10)
	b.denied = testPacket(src, netip.AddrPortFrom(addrs[0], 81), datapath.TCP, 0x10)
	b.read = drainFlows(t, m)
	return b
}

// run runs pkt n times in one BPF_PROG_TEST_RUN, once the reader has
// read every event written (so that no event is lost: n events fit), and
// returns the kernel's ns per packet.
func (b *eventsBench) drained(t testing.TB) {
	t.Helper()
	testenv.WaitFor(t, 30*time.Second, "every event read", func() bool {
		c, err := b.m.Counters()
		return err == nil && b.read() >= c.Events
	})
}

func (b *eventsBench) run(t testing.TB, pkt []byte, n int, want int32) float64 {
	t.Helper()
	b.drained(t)
	ret, d, err := b.progs.FromEp.Benchmark(pkt, n, nil)
	dptest.NoErr(t, err)
	if int32(ret) != want {
		t.Fatalf("verdict %d, want %d", int32(ret), want)
	}
	return float64(d.Nanoseconds())
}

// figuresPolicyEvents prints flow.events.cost_ratio (make bench): the
// egress program's ns per packet of an established, allowed TCP flow with
// the demo's flow events on (every packet traced) over the same with
// every event off, the median of 15 paired rounds, with both ns figures
// on the lines around it. Each round runs 10 × 20,000 packets each way,
// the ring buffer (4 MiB: 47,000 events) drained by a reader before each
// run, so every event is written, none lost. A denied packet's cost (a
// drop event; on: a policy verdict too) is logged beside.
func figuresPolicyEvents(t *testing.T) {
	b := newEventsBench(t)
	c0, err := b.m.Counters()
	dptest.NoErr(t, err)
	// per packets of a run: at most 2 events each (a denied packet's
	// verdict and drop), 88 bytes per event in a ring of 4 MiB.
	const runs, per = 10, 20_000
	round := func(cfg flows.Config, pkt []byte, want int32) float64 {
		dptest.NoErr(t, b.m.SetFlowConfig(cfg))
		var sum float64
		for range runs {
			sum += b.run(t, pkt, per, want)
		}
		return sum / runs
	}
	var off, on, denOff, denOn []float64
	for r := -1; r < 15; r++ {
		f, o := round(eventsOff, b.allowed, -1), round(eventsOn, b.allowed, -1)
		df, do := round(eventsOff, b.denied, 2), round(eventsOn, b.denied, 2)
		if r >= 0 {
			off, on, denOff, denOn = append(off, f), append(on, o), append(denOff, df), append(denOn, do)
		}
	}
	c, err := b.m.Counters()
	dptest.NoErr(t, err)
	t.Logf("off %v\non %v\ndenied (a drop event; on: a policy verdict too) off %v on %v\n%d events written, %d lost, %d read",
		off, on, denOff, denOn, c.Events-c0.Events, c.EventsLost-c0.EventsLost, b.read())
	if lost := c.EventsLost - c0.EventsLost; lost > 0 {
		t.Errorf("%d events lost: the figure would count reservations that failed", lost)
	}
	t.Logf("denied packet: %.0f ns off, %.0f ns on (ratio %.3f)", dptest.Median(denOff), dptest.Median(denOn), dptest.PairedRatio(denOn, denOff))
	figure.Print("flow.events.on_ns_per_packet", math.Round(dptest.Median(on)), "ns")
	figure.Print("flow.events.cost_ratio", dptest.Round3(dptest.PairedRatio(on, off)), "ratio")
	figure.Print("flow.events.off_ns_per_packet", math.Round(dptest.Median(off)), "ns")
}

// BenchmarkPolicyProgramEvents: the egress program on an established,
// allowed TCP flow's packet, with the flow events off and on (as
// figuresPolicyEvents; b.N packets in one BPF_PROG_TEST_RUN once a reader
// has read every event before; more than 47,000 overflow the ring).
func BenchmarkPolicyProgramEvents(b *testing.B) {
	testenv.RequireRoot(b)
	eb := newEventsBench(b)
	for _, c := range []struct {
		name string
		cfg  flows.Config
	}{{"off", eventsOff}, {"on", eventsOn}} {
		b.Run(c.name, func(b *testing.B) {
			dptest.NoErr(b, eb.m.SetFlowConfig(c.cfg))
			eb.drained(b)
			c0, err := eb.m.Counters()
			dptest.NoErr(b, err)
			b.ResetTimer()
			_, err = eb.progs.FromEp.Run(&ebpf.RunOptions{Data: eb.allowed, Repeat: uint32(b.N)})
			b.StopTimer()
			dptest.NoErr(b, err)
			c1, err := eb.m.Counters()
			dptest.NoErr(b, err)
			b.ReportMetric(float64(c1.Events-c0.Events)/float64(b.N), "events/op")
			b.ReportMetric(float64(c1.EventsLost-c0.EventsLost)/float64(b.N), "lost/op")
		})
	}
}
