package tcpolicy

import (
	"context"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/internal/dptest"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// benchIPCache fills m's ipcache with n /32 entries spread over clusters
// 1..4 (10.<cluster>.x.y, identity (cluster<<16)+1+i%1000) and a few
// covering /16s, and returns the addresses in order.
func benchIPCache(t testing.TB, m *datapath.Maps, n int) []netip.Addr {
	t.Helper()
	ps := make([]netip.Prefix, 0, n+4)
	es := make([]datapath.IPCacheEntry, 0, n+4)
	addrs := make([]netip.Addr, 0, n)
	for i := range n {
		c := 1 + i%4
		j := i / 4
		a := netip.AddrFrom4([4]byte{10, byte(c), byte(j >> 8), byte(j)})
		addrs = append(addrs, a)
		ps = append(ps, netip.PrefixFrom(a, 32))
		es = append(es, datapath.IPCacheEntry{Identity: uint32(c)<<16 + 1 + uint32(i%1000), ClusterID: uint16(c), TunnelEndpoint: netip.AddrFrom4([4]byte{192, 168, byte(c), 1})})
	}
	for c := 1; c <= 4; c++ {
		ps = append(ps, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(c), 0, 0}), 16))
		es = append(es, datapath.IPCacheEntry{Identity: uint32(c)<<16 + 0xffff, ClusterID: uint16(c)})
	}
	dptest.NoErr(t, m.UpsertIPCacheBatch(ps, es))
	return addrs
}

// benchPolicy writes n policy keys: endpoints 0x10001.. each allowing 100
// peers (identities of benchIPCache) on TCP port 80; key 0 is endpoint
// 0x10001 allowing the identity of peer.
func benchPolicy(t testing.TB, m *Programs, n int) {
	t.Helper()
	changes := make([]Change, 0, n)
	for i := range n {
		ep := uint32(0x10001 + i/100)
		peer := uint32(1+(i%4))<<16 + 1 + uint32(i%100)
		changes = append(changes, Change{Key: Key{Endpoint: ep, Peer: peer, Direction: datapath.Egress, Protocol: datapath.TCP, Port: 80}, Add: true})
	}
	dptest.NoErr(t, m.ApplyPolicy(changes))
}

// TestFiguresPolicy prints the policy datapath's figures (make bench).
//
//   - policy.tc.ns_per_packet: the egress program's run time per packet
//     (BPF_PROG_TEST_RUN, 1,000,000 repeats, median of 15 rounds) for a
//     packet of an established, allowed TCP flow, with 100,000 ipcache
//     entries and 10,000 policy entries: what almost every packet pays
//     (the verdict is cached in the flow's conntrack entry). Goal ≤ 100 ns.
//   - policy.tc.empty_ns_per_packet and policy.tc.ratio_to_empty: an empty
//     tc program in the same rounds, and the median of the per-round ratio.
//   - policy.tc.lookup_ns_per_packet: the same packet with every packet
//     looked up in the ipcache and the policy map (strict mode): what the
//     first packet of a flow, and every packet in strict mode, pays.
//   - policy.tc.denied_ns_per_packet: a packet the policy denies (both
//     lookups, the drop counted and reported; the ring buffer is drained by
//     a reader meanwhile).
//   - flow.events.per_s, flow.events.lost: drop events generated at
//     100,000 per second for 5 s (BPF_PROG_TEST_RUN of a denied packet,
//     paced every millisecond) and read by a flows.Reader: the rate read and
//     the events lost (default ring buffer, 4 MiB).
//   - flow.events.max_per_s, flow.events.max_lost: the same unpaced, as fast
//     as one CPU generates them for 3 s.
//   - policy.apply.entries_per_s: ApplyPolicy of 10,000 new keys in one
//     batch.
//   - flow.events.on_ns_per_packet, flow.events.cost_ratio,
//     flow.events.off_ns_per_packet: what the flow events cost
//     (figuresPolicyEvents).
func TestFiguresPolicy(t *testing.T) {
	figure.Require(t)
	testenv.RequireRoot(t)

	t.Run("tc", figuresPolicyTc)
	t.Run("flows", figuresPolicyFlows)
	t.Run("events", figuresPolicyEvents)
	t.Run("apply", figuresPolicyApply)
}

func figuresPolicyTc(t *testing.T) {
	mesh, m := openDefault(t)
	addrs := benchIPCache(t, mesh, 100_000)
	benchPolicy(t, m, 10_000)
	progs := loadTestPolicyProgs(t, m)
	setTestEndpoint(t, m, 1, 0x10001, true, true)
	peer := addrs[0] // identity 0x10001, cluster 1: allowed on TCP 80
	allowed := testPacket(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), 40000), netip.AddrPortFrom(peer, 80), datapath.TCP, 0x10)
	denied := testPacket(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), 40000), netip.AddrPortFrom(peer, 81), datapath.TCP, 0x10)
	drain := drainFlows(t, m)
	const repeat = 1_000_000
	bench := func(pkt []byte, n int, want int32) float64 {
		ret, d, err := progs.FromEp.Benchmark(pkt, n, nil)
		dptest.NoErr(t, err)
		if int32(ret) != want {
			t.Fatalf("verdict %d, want %d", int32(ret), want)
		}
		return float64(d.Nanoseconds())
	}
	var pol, empty, lookup, den []float64
	for r := -1; r < 15; r++ {
		p := bench(allowed, repeat, -1)
		_, de, err := progs.Empty.Benchmark(allowed, repeat, nil)
		dptest.NoErr(t, err)
		dptest.NoErr(t, m.SetStrict(true))
		l := bench(allowed, repeat, -1)
		dptest.NoErr(t, m.SetStrict(false))
		d := bench(denied, repeat/10, 2)
		if r >= 0 {
			pol = append(pol, p)
			empty = append(empty, float64(de.Nanoseconds()))
			lookup = append(lookup, l)
			den = append(den, d)
		}
	}
	t.Logf("established %v\nempty %v\nlookup %v\ndenied %v (%d events read)", pol, empty, lookup, den, drain())
	figure.Print("policy.tc.ns_per_packet", math.Round(dptest.Median(pol)), "ns")
	figure.Print("policy.tc.empty_ns_per_packet", math.Round(dptest.Median(empty)), "ns")
	figure.Print("policy.tc.ratio_to_empty", dptest.Round3(dptest.PairedRatio(pol, empty)), "ratio")
	figure.Print("policy.tc.lookup_ns_per_packet", math.Round(dptest.Median(lookup)), "ns")
	figure.Print("policy.tc.denied_ns_per_packet", math.Round(dptest.Median(den)), "ns")
}

func figuresPolicyFlows(t *testing.T) {
	_, m := openDefault(t)
	progs := loadTestPolicyProgs(t, m)
	setTestEndpoint(t, m, 1, 0x10001, true, true)
	denied := testPacket(netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), 40000), netip.AddrPortFrom(netip.MustParseAddr("10.9.0.1"), 81), datapath.TCP, 0x02)
	fr, err := m.OpenFlows()
	dptest.NoErr(t, err)
	defer fr.Close()
	var read atomic.Uint64
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			if _, err := fr.Read(context.Background()); err != nil {
				return
			}
			read.Add(1)
		}
	})
	defer func() { fr.Close(); wg.Wait() }()
	generate := func(n int) {
		_, err := progs.FromEp.Run(&ebpf.RunOptions{Data: denied, Repeat: uint32(n)})
		dptest.NoErr(t, err)
	}
	// measure generates events for d, paced at rate per second (0: as
	// fast as it can), and returns the rate read and the events lost.
	measure := func(rate int, d time.Duration) (float64, uint64) {
		lost0, err := fr.Lost()
		dptest.NoErr(t, err)
		read0 := read.Load()
		start := time.Now()
		sent := 0
		if rate == 0 {
			for time.Since(start) < d {
				generate(1000)
				sent += 1000
			}
		} else {
			tick := time.NewTicker(time.Millisecond)
			for now := start; now.Sub(start) < d; now = <-tick.C {
				due := int(float64(rate) * now.Sub(start).Seconds())
				if due > sent {
					generate(due - sent)
					sent = due
				}
			}
			tick.Stop()
		}
		lost, err := fr.Lost()
		dptest.NoErr(t, err)
		lost -= lost0
		testenv.WaitFor(t, 30*time.Second, "every event read", func() bool { return read.Load()-read0+lost >= uint64(sent) })
		took := time.Since(start)
		got := read.Load() - read0
		t.Logf("%d events generated in %v, %d read, %d lost", sent, took.Round(time.Millisecond), got, lost)
		return float64(got) / took.Seconds(), lost
	}
	perS, lost := measure(100_000, 5*time.Second)
	figure.Print("flow.events.per_s", math.Round(perS), "events/s")
	figure.Print("flow.events.lost", float64(lost), "events")
	maxS, maxLost := measure(0, 3*time.Second)
	figure.Print("flow.events.max_per_s", math.Round(maxS), "events/s")
	figure.Print("flow.events.max_lost", float64(maxLost), "events")
}

func figuresPolicyApply(t *testing.T) {
	_, m := openDefault(t)
	start := time.Now()
	benchPolicy(t, m, 10_000)
	took := time.Since(start)
	figure.Print("policy.apply.entries_per_s", math.Round(10_000/took.Seconds()), "entries/s")
}

// openDefault opens the mesh maps and the programs' maps with their
// default sizes (the figures' setting), closed and unpinned at the end.
func openDefault(t testing.TB) (*datapath.Maps, *Programs) {
	t.Helper()
	mesh := dptest.OpenMaps(t, datapath.Config{}, RemovePins)
	p, err := Open(mesh, Config{})
	dptest.NoErr(t, err)
	t.Cleanup(func() { p.Close() })
	return mesh, p
}

// drainFlows reads m's flow events in the background until the test ends;
// the returned function tells how many it read so far.
func drainFlows(t testing.TB, m *Programs) func() uint64 {
	t.Helper()
	fr, err := m.OpenFlows()
	dptest.NoErr(t, err)
	var n atomic.Uint64
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			if _, err := fr.Read(context.Background()); err != nil {
				return
			}
			n.Add(1)
		}
	})
	t.Cleanup(func() { fr.Close(); wg.Wait() })
	return n.Load
}
