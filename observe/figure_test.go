package observe

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	flowpb "github.com/cilium/cilium/api/v1/flow"
	"math"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/wire"
)

// TestFiguresObserve prints the hub's figures with the real datapath (make
// bench):
//
//   - flow.observe.per_s: flows the hub reads, enriches, keeps and hands to
//     one following subscriber per second, when the policy program drops
//     100,000 packets per second for 5 s: real UDP packets to 127.0.0.1 in
//     a network namespace of the test's own whose loopback's egress the
//     policy program enforces with no allowed peer (each packet is one
//     drop event in the ring buffer, read by a flows.Reader).
//   - flow.observe.lost: events that did not reach the subscriber in that
//     time: lost in the datapath's ring buffer (the hub read too slowly)
//     plus dropped for the subscriber (it read too slowly).
func TestFiguresObserve(t *testing.T) {
	figure.Require(t)
	inNS, conn, fr := dropFigure(t)
	h, got, stop := countDrops(t, fr)
	defer stop()

	const rate, d = 100_000, 5 * time.Second
	start := time.Now()
	sent := sendAtRate(inNS, conn, start, rate, d)
	lost := func() uint64 { st := h.Stats(); return st.LostDatapath + st.LostSubscriber }
	testenv.WaitFor(t, 30*time.Second, "every event at the subscriber or lost", func() bool {
		dl, _ := fr.Lost()
		return got.Load()+lost() >= uint64(sent) && h.Stats().LostDatapath == dl
	})
	took := time.Since(start)
	st := h.Stats()
	t.Logf("%d packets sent in %v; subscriber got %d; lost %d in the datapath, %d for the subscriber",
		sent, took.Round(time.Millisecond), got.Load(), st.LostDatapath, st.LostSubscriber)
	if got.Load() == 0 {
		t.Fatal("no flow reached the subscriber")
	}
	figure.Print("flow.observe.per_s", math.Round(float64(got.Load())/took.Seconds()), "flows/s")
	figure.Print("flow.observe.lost", float64(lost()), "events")
}

// dropFigure sets up the figures' datapath, as root: the policy programs
// dropping (and reporting) every packet the namespace's loopback sends,
// the UDP socket to send them on, and the reader of their events; all
// closed when t ends.
func dropFigure(t *testing.T) (inNS func(nsOp), conn *net.UDPConn, fr *flows.Reader) {
	t.Helper()
	testenv.RequireRoot(t)
	progs := openFigurePrograms(t)
	inNS = netnsThread(t)
	conn = dropLoopbackEgress(t, inNS, progs)
	t.Cleanup(func() { inNS(func() error { return conn.Close() }) })
	fr, err := progs.OpenFlows()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fr.Close() })
	return inNS, conn, fr
}

// openFigurePrograms opens the datapath's maps and the policy programs'
// pinned in a directory of the test's own, closed and unpinned when t ends.
func openFigurePrograms(t *testing.T) *tcpolicy.Programs {
	t.Helper()
	var b [6]byte
	rand.Read(b[:])
	dir := filepath.Join("/sys/fs/bpf", "cm-obs-test-"+hex.EncodeToString(b[:]))
	maps, err := datapath.OpenMaps(datapath.Config{PinDir: dir, MaxIPCache: 1 << 12, MaxServiceSlots: 1 << 10, MaxBackends: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	progs, err := tcpolicy.Open(maps, tcpolicy.Config{})
	if err != nil {
		maps.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		progs.Close()
		maps.Close()
		if err := errors.Join(tcpolicy.RemovePins(dir), datapath.RemovePins(dir)); err != nil {
			t.Errorf("RemovePins: %v", err)
		}
	})
	return progs
}

// nsOp is an operation run in the test's network namespace.
type nsOp func() error

// netnsThread gives the test a network namespace of its own, and returns
// the function that runs an operation in it (failing t if it fails). The
// namespace lives on one locked thread, which exits with the test: the
// namespace, its loopback and the attachment go with it.
func netnsThread(t *testing.T) func(nsOp) {
	t.Helper()
	ops := make(chan nsOp)
	errs := make(chan error)
	var nsWG sync.WaitGroup
	nsWG.Go(func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errs <- err
			return
		}
		errs <- nil
		for op := range ops {
			errs <- op()
		}
	})
	t.Cleanup(func() { close(ops); nsWG.Wait() })
	if err := <-errs; err != nil {
		t.Fatalf("unshare: %v", err)
	}
	return func(op nsOp) {
		t.Helper()
		ops <- op
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// dropLoopbackEgress brings the namespace's loopback up with the policy
// program enforcing its egress, nothing allowed: every packet lo sends is
// dropped and reported. It returns a UDP socket to 127.0.0.1 in the
// namespace.
func dropLoopbackEgress(t *testing.T, inNS func(nsOp), progs *tcpolicy.Programs) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	inNS(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		if err := progs.SetFlowConfig(flows.Config{ClusterID: 1}); err != nil {
			return err
		}
		if err := progs.Attach(lo.Attrs().Index, 70001, false, true); err != nil {
			return err
		}
		conn, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
		return err
	})
	return conn
}

// countDrops runs a hub reading fr, with a subscriber following the drops
// and counting their flows; stop closes the subscriber, stops the hub and
// waits for both goroutines.
func countDrops(t *testing.T, fr *flows.Reader) (h *Hub, got *atomic.Uint64, stop func()) {
	h = NewHub(Config{Enricher: newStaticEnricher()})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := h.Run(ctx, fr); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	sub := h.Subscribe(Query{Follow: true, Match: func(f *flowpb.Flow) bool { return f.GetVerdict() == flowpb.Verdict_DROPPED }})
	got = new(atomic.Uint64)
	wg.Go(func() {
		for ev := range sub.Events() {
			if ev.GetFlow() != nil {
				got.Add(1)
			}
		}
	})
	return h, got, func() {
		sub.Close()
		cancel()
		wg.Wait()
	}
}

// sendAtRate writes rate packets a second on conn, from start for d, in
// the namespace, and returns how many it wrote.
func sendAtRate(inNS func(nsOp), conn *net.UDPConn, start time.Time, rate int, d time.Duration) int {
	payload := []byte("clustermesh")
	sent := 0
	inNS(func() error {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for now := start; now.Sub(start) < d; now = <-tick.C {
			for due := int(float64(rate) * now.Sub(start).Seconds()); sent < due; sent++ {
				conn.Write(payload) // dropped on egress: no error for UDP
			}
		}
		return nil
	})
	return sent
}

// staticEnricher answers from maps filled in advance, as the agent's does
// (testEnricher builds its labels on every call).
type staticEnricher struct {
	ids map[uint32]wire.Labels
}

func newStaticEnricher() staticEnricher {
	e := staticEnricher{ids: map[uint32]wire.Labels{}}
	for _, id := range []uint32{70001, 132000, datapath.IdentityWorld} {
		e.ids[id], _ = testEnricher{}.Identity(id)
	}
	return e
}

func (e staticEnricher) Identity(id uint32) (wire.Labels, bool) { l, ok := e.ids[id]; return l, ok }
func (staticEnricher) ClusterName(id uint16) string             { return testEnricher{}.ClusterName(id) }
func (staticEnricher) Pod(ip netip.Addr, _ uint16) (Pod, bool) {
	if ip.IsLoopback() {
		return Pod{Cluster: "east", Namespace: "shop", Name: "checkout-0"}, true
	}
	return Pod{}, false
}

func (staticEnricher) Service(netip.AddrPort) (string, string, bool) { return "", "", false }
