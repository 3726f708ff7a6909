package socklb

import (
	"context"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/internal/dptest"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// Figures and benchmarks of the socket load balancer: real TCP connects on
// the loopback of a network namespace made by the test. Sockets take the
// cgroup of the process that creates them, so this process moves itself
// between a cgroup with the programs attached and one without (and back to
// where it was at cleanup); only the connecting goroutine runs meanwhile.
// Each connect closes with SO_LINGER 0 (a reset, no TIME_WAIT), so that
// ephemeral ports never run out.

// connectBench is the environment: maps, a cgroup with a SockLB and a
// plain one, a namespace whose loopback has a server on every address at
// benchPort.
type connectBench struct {
	acc     *acceptor
	maps    *datapath.Maps
	lb      *LB
	lbCg    string
	plainCg string
	ns      string
	port    uint16
}

func newConnectBench(tb testing.TB) *connectBench {
	tb.Helper()
	testenv.RequireRoot(tb)
	e := &connectBench{}
	e.maps = dptest.OpenMaps(tb, datapath.Config{PinDir: dptest.PinDir(tb, RemovePins)})
	e.lbCg = newTestCgroup(tb)
	e.plainCg = newTestCgroup(tb)
	lb, err := Attach(e.maps, e.lbCg, Config{})
	if err != nil {
		tb.Fatalf("Attach: %v", err)
	}
	tb.Cleanup(func() { lb.Close() })
	e.lb = lb
	drainEvents(tb, lb)
	e.ns = "cmt-" + dptest.RandomID(tb) + "-bench"
	dptest.NewNetns(tb, e.ns)

	e.acc = newAcceptor(tb)
	e.port = e.listen(tb, netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	return e
}

// drainEvents reads lb's translation events until the test ends, as the
// agent does (so that the figures include writing them), and logs how many
// it read and how many were lost.
func drainEvents(tb testing.TB, lb *LB) {
	tb.Helper()
	r, err := lb.OpenEvents()
	dptest.NoErr(tb, err)
	var read atomic.Uint64
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			if _, err := r.Read(context.Background()); err != nil {
				return
			}
			read.Add(1)
		}
	})
	tb.Cleanup(func() {
		lost, _ := r.Lost()
		r.Close()
		wg.Wait()
		tb.Logf("translation events: %d read, %d lost", read.Load(), lost)
	})
}

// listen serves addr in the namespace until cleanup and returns its port.
func (e *connectBench) listen(tb testing.TB, addr netip.AddrPort) uint16 {
	tb.Helper()
	var fd int
	err := dptest.InNetns(e.ns, func() (err error) {
		fd, err = listenRaw(addr)
		return err
	})
	if err != nil {
		tb.Fatalf("listen on %s in %s: %v", addr, e.ns, err)
	}
	e.acc.add(tb, fd)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		tb.Fatal(err)
	}
	return uint16(sa.(*unix.SockaddrInet4).Port)
}

// listenRaw returns a non-blocking IPv4 TCP listener on addr.
func listenRaw(addr netip.AddrPort) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: addr.Addr().As4(), Port: int(addr.Port())}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Listen(fd, 4096); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// acceptor accepts and closes the connections of every listener added to
// it, from one goroutine over one epoll set: the server's work per
// connection is the same whether one listener or 10,000 take them.
type acceptor struct {
	epfd int
	stop int // eventfd that ends the loop
	mu   sync.Mutex
	fds  []int
	wg   sync.WaitGroup
}

func newAcceptor(tb testing.TB) *acceptor {
	tb.Helper()
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		tb.Fatal(err)
	}
	stop, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		tb.Fatal(err)
	}
	a := &acceptor{epfd: epfd, stop: stop}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, stop, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(stop)}); err != nil {
		tb.Fatal(err)
	}
	a.wg.Go(a.loop)
	tb.Cleanup(func() {
		unix.Write(stop, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		a.wg.Wait()
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, fd := range a.fds {
			unix.Close(fd)
		}
		unix.Close(epfd)
		unix.Close(stop)
	})
	return a
}

func (a *acceptor) add(tb testing.TB, fd int) {
	tb.Helper()
	a.mu.Lock()
	a.fds = append(a.fds, fd)
	a.mu.Unlock()
	if err := unix.EpollCtl(a.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
		tb.Fatal(err)
	}
}

func (a *acceptor) loop() {
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(a.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range events[:n] {
			if int(ev.Fd) == a.stop {
				return
			}
			for {
				c, _, err := unix.Accept4(int(ev.Fd), unix.SOCK_CLOEXEC)
				if err != nil {
					break // EAGAIN: drained
				}
				unix.Close(c)
			}
		}
	}
}

// ownCgroup returns the cgroup v2 directory this process is in.
func ownCgroup(tb testing.TB) string {
	tb.Helper()
	root, err := Cgroup2Mount()
	if err != nil {
		tb.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(root, rest)
		}
	}
	tb.Fatalf("no cgroup v2 line in /proc/self/cgroup:\n%s", b)
	return ""
}

// moveSelf moves this process (all its threads) into cgroup dir.
func moveSelf(tb testing.TB, dir string) {
	tb.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		tb.Fatalf("move into cgroup %s: %v", dir, err)
	}
}

// enter moves this process into dir until the end of the test.
func (e *connectBench) enter(tb testing.TB, dir string) {
	tb.Helper()
	orig := ownCgroup(tb)
	moveSelf(tb, dir)
	tb.Cleanup(func() { moveSelf(tb, orig) })
}

func sockaddr(ap netip.AddrPort) (unix.Sockaddr, int) {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}, unix.AF_INET
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}, unix.AF_INET6
}

var lingerReset = unix.Linger{Onoff: 1, Linger: 0}

// connectOnce connects a new TCP socket to sa and resets it.
func connectOnce(sa unix.Sockaddr, family int) error {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &lingerReset)
	err = unix.Connect(fd, sa)
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("connect %s: %w", sockaddrString(sa), err)
	}
	return nil
}

// loopbackBackends returns n backends at port on distinct loopback
// addresses: 127.0.0.1 first, then 127.1.0.1 onwards.
func loopbackBackends(n int, port uint16) []datapath.Backend {
	out := make([]datapath.Backend, n)
	for i := range out {
		a := netip.AddrFrom4([4]byte{127, 0, 0, 1})
		if i > 0 {
			a = netip.AddrFrom4([4]byte{127, 1 + byte(i>>16), byte(i >> 8), byte(i)})
		}
		out[i] = datapath.Backend{Addr: a, Port: port, Protocol: datapath.TCP, ClusterID: 1}
	}
	return out
}

// connectCase is one kind of connect of an interleaved measurement.
type connectCase struct {
	name string
	dsts []unix.Sockaddr // one picked at random per connect
}

func connectCaseOf(name string, aps ...netip.AddrPort) connectCase {
	c := connectCase{name: name}
	for _, ap := range aps {
		sa, _ := sockaddr(ap)
		c.dsts = append(c.dsts, sa)
	}
	return c
}

// interleaved connects from the namespace in rounds: in each round, a block
// of perRound connects per case, case after case (the order rotating from
// round to round), and returns each case's connects/s per round
// (rates[case][round]). Blocks of a few milliseconds keep the kernel's
// deferred work (RCU frees, the server's accepts) mostly within the block
// that caused it, while load from elsewhere on the machine falls on all
// cases of a round alike. A block stops early after maxBlock. The sockets
// are made in the cgroup this process is in. IPv4 only.
func (e *connectBench) interleaved(t *testing.T, cases []connectCase, rounds, perRound int, maxBlock time.Duration) map[string][]float64 {
	t.Helper()
	rates := make(map[string][]float64, len(cases))
	err := dptest.InNetns(e.ns, func() error {
		for r := -1; r < rounds; r++ { // round -1 warms up
			for j := range cases {
				c := cases[(j+max(r, 0))%len(cases)]
				start := time.Now()
				deadline := start.Add(maxBlock)
				n := 0
				for n < perRound && (n%16 != 0 || time.Now().Before(deadline)) {
					sa := c.dsts[0]
					if len(c.dsts) > 1 {
						sa = c.dsts[mrand.IntN(len(c.dsts))]
					}
					if err := connectOnce(sa, unix.AF_INET); err != nil {
						return fmt.Errorf("%s: %w", c.name, err)
					}
					n++
				}
				if r >= 0 {
					rates[c.name] = append(rates[c.name], float64(n)/time.Since(start).Seconds())
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rates
}

// TestFigures prints the socket load balancer's figures (make bench). Every
// figure is measured on real TCP connects on loopback (a namespace of the
// test's), in interleaved blocks of 1,000 connects so that load from
// elsewhere on the machine cancels out; ratios are medians over 40 rounds
// of the ratio within the round.
//
//   - lb.connect.ratio: connects/s to a service frontend with one backend
//     over connects/s straight to that backend, both from the cgroup with
//     the programs: what the translation costs. Goal ≥ 0.9.
//   - lb.connect.miss_ratio: connects/s straight to the backend from the
//     cgroup with the programs (they look the address up and find no
//     service) over the same from a cgroup without them (measured by
//     moving this process between the two): what every other connect pays.
//   - lb.scale.ratio: connects/s to a frontend with 10,000 backends (on
//     10,000 loopback addresses) over one with a single backend, divided by
//     the same ratio for direct connects to those addresses (a random one
//     each time) and to the single backend: the kernel's own cost of
//     reaching many destinations (4–10 % here, programs or not) is not the
//     load balancer's. Goal ≥ 0.95. lb.scale.raw_ratio is the undivided
//     ratio, lb.scale.direct_ratio the divisor.
//   - lb.connect.service_per_s, lb.connect.direct_per_s: medians behind
//     lb.connect.ratio.
//   - lb.prog.connect4_*_ns: the connect4 program's own run time per
//     connect (kernel BPF statistics) for a non-service address, a service
//     with 1 backend and one with 10,000.
//
// lb.reconcile.slots_per_s, the mesh maps' own, is TestFiguresReconcile
// of package datapath.
func TestFigures(t *testing.T) {
	figure.Require(t)
	testenv.RequireRoot(t)

	t.Run("connect", func(t *testing.T) {
		e := newConnectBench(t)
		lo := netip.AddrFrom4([4]byte{127, 0, 0, 1})
		backend := netip.AddrPortFrom(lo, e.port)
		one := dptest.Frontend("10.96.0.1:80", datapath.TCP)
		many := dptest.Frontend("10.96.0.3:80", datapath.TCP)
		distinct := loopbackBackends(10_000, e.port)
		dptest.NoErr(t, e.maps.UpsertService(one, loopbackBackends(1, e.port)))
		dptest.NoErr(t, e.maps.UpsertService(many, distinct))

		e.enter(t, e.lbCg)
		rates := e.interleaved(t, []connectCase{
			connectCaseOf("direct", backend),
			connectCaseOf("service, 1 backend", netip.AddrPortFrom(one.Addr, one.Port)),
			connectCaseOf("service, 10k backends", netip.AddrPortFrom(many.Addr, many.Port)),
			connectCaseOf("direct, 10k addresses", backendAddrs(distinct)...),
		}, 40, 1000, 2*time.Second)
		for name, rs := range rates {
			t.Logf("%-24s median %6.0f connects/s over %d rounds", name, dptest.Median(rs), len(rs))
		}
		direct, svc1 := rates["direct"], rates["service, 1 backend"]
		svc10k, direct10k := rates["service, 10k backends"], rates["direct, 10k addresses"]
		scale := make([]float64, len(svc1))
		for r := range scale {
			scale[r] = (svc10k[r] / svc1[r]) / (direct10k[r] / direct[r])
		}

		// The miss path: the same direct connects with and without the
		// programs, by moving this process between the two cgroups.
		var with, without []float64
		for r := -1; r < 40; r++ {
			for _, cg := range []string{e.lbCg, e.plainCg} {
				moveSelf(t, cg)
				rate := dptest.Median(e.interleaved(t, []connectCase{connectCaseOf("direct", backend)}, 1, 1000, time.Second)["direct"])
				if r < 0 {
					continue
				}
				if cg == e.lbCg {
					with = append(with, rate)
				} else {
					without = append(without, rate)
				}
			}
		}
		moveSelf(t, e.lbCg)
		t.Logf("direct with programs median %.0f/s, without %.0f/s", dptest.Median(with), dptest.Median(without))

		// The programs' own cost, from the kernel's run-time statistics
		// (BPF_ENABLE_STATS, on only while this runs).
		progNs := func(dst netip.AddrPort) float64 {
			stats, err := ebpf.EnableStats(0 /* BPF_STATS_RUN_TIME */)
			if err != nil {
				t.Fatalf("enable BPF statistics: %v", err)
			}
			defer stats.Close()
			before, err := e.lb.objs.CmSock4Connect.Stats()
			dptest.NoErr(t, err)
			e.interleaved(t, []connectCase{connectCaseOf("", dst)}, 1, 20_000, 2*time.Second)
			after, err := e.lb.objs.CmSock4Connect.Stats()
			dptest.NoErr(t, err)
			return float64(after.Runtime-before.Runtime) / float64(after.RunCount-before.RunCount)
		}
		figure.Print("lb.prog.connect4_miss_ns", math.Round(progNs(backend)), "ns")
		figure.Print("lb.prog.connect4_1_backend_ns", math.Round(progNs(netip.AddrPortFrom(one.Addr, one.Port))), "ns")
		figure.Print("lb.prog.connect4_10k_backends_ns", math.Round(progNs(netip.AddrPortFrom(many.Addr, many.Port))), "ns")

		figure.Print("lb.connect.ratio", dptest.Round3(dptest.PairedRatio(svc1, direct)), "ratio")
		figure.Print("lb.connect.miss_ratio", dptest.Round3(dptest.PairedRatio(with, without)), "ratio")
		figure.Print("lb.scale.ratio", dptest.Round3(dptest.Median(scale)), "ratio")
		figure.Print("lb.scale.raw_ratio", dptest.Round3(dptest.PairedRatio(svc10k, svc1)), "ratio")
		figure.Print("lb.scale.direct_ratio", dptest.Round3(dptest.PairedRatio(direct10k, direct)), "ratio")
		figure.Print("lb.connect.service_per_s", float64(int(dptest.Median(svc1))), "connects/s")
		figure.Print("lb.connect.direct_per_s", float64(int(dptest.Median(direct))), "connects/s")
	})

}

func backendAddrs(bs []datapath.Backend) []netip.AddrPort {
	out := make([]netip.AddrPort, len(bs))
	for i, b := range bs {
		out[i] = netip.AddrPortFrom(b.Addr, b.Port)
	}
	return out
}

// BenchmarkSockLBConnect: one op is one TCP connect (and reset) on
// loopback: from a cgroup without the programs straight to the backend,
// from the programs' cgroup straight to the backend (a lookup miss), and to
// frontends with 1 backend and with 10,000 backends on 10,000 addresses.
func BenchmarkSockLBConnect(b *testing.B) {
	e := newConnectBench(b)
	backend := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), e.port)
	one := dptest.Frontend("10.96.0.1:80", datapath.TCP)
	many := dptest.Frontend("10.96.0.3:80", datapath.TCP)
	dptest.NoErr(b, e.maps.UpsertService(one, loopbackBackends(1, e.port)))
	dptest.NoErr(b, e.maps.UpsertService(many, loopbackBackends(10_000, e.port)))
	for _, c := range []struct {
		name string
		cg   string
		dst  netip.AddrPort
	}{
		{"direct-no-programs", e.plainCg, backend},
		{"direct-programs-miss", e.lbCg, backend},
		{"service-1-backend", e.lbCg, netip.AddrPortFrom(one.Addr, one.Port)},
		{"service-10k-backends", e.lbCg, netip.AddrPortFrom(many.Addr, many.Port)},
	} {
		b.Run(c.name, func(b *testing.B) {
			e.enter(b, c.cg)
			sa, family := sockaddr(c.dst)
			restore := enterNetns(b, e.ns)
			defer restore()
			for b.Loop() {
				if err := connectOnce(sa, family); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// enterNetns switches the calling goroutine's thread into ns until restore
// is called (the thread is discarded if it cannot be switched back).
func enterNetns(tb testing.TB, ns string) (restore func()) {
	tb.Helper()
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		tb.Fatal(err)
	}
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		tb.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		tb.Fatalf("setns %s: %v", ns, err)
	}
	return func() {
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		orig.Close()
	}
}
