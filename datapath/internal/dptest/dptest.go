// Package dptest is the test support of the datapath packages: pin
// directories and maps that are removed when a test ends, network
// namespaces with servers in them, and the assertions their tests share.
// Tests import it; the packages' own files never do.
package dptest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// PinDir returns a fresh pin directory under /sys/fs/bpf (not created),
// whose pins are removed when the test ends (after the test's own
// cleanups, which may close maps pinned there): by each of remove (the
// RemovePins of the packages under test) and then by datapath.RemovePins.
func PinDir(t testing.TB, remove ...func(pinDir string) error) string {
	t.Helper()
	dir := filepath.Join("/sys/fs/bpf", "cm-test-"+RandomID(t)+RandomID(t))
	t.Cleanup(func() {
		for _, rm := range append(remove, datapath.RemovePins) {
			if err := rm(dir); err != nil {
				t.Errorf("leftover pins: %v", err)
			}
		}
	})
	return dir
}

// SmallConfig keeps the preallocated hash maps small in tests.
func SmallConfig(dir string) datapath.Config {
	return datapath.Config{PinDir: dir, MaxIPCache: 1 << 18, MaxServiceSlots: 1 << 14, MaxBackends: 1 << 12}
}

// OpenMaps opens the mesh maps in cfg.PinDir (a fresh PinDir, cleaned with
// remove, when empty) and closes and unpins them when the test ends. It
// needs root.
func OpenMaps(t testing.TB, cfg datapath.Config, remove ...func(pinDir string) error) *datapath.Maps {
	t.Helper()
	testenv.RequireRoot(t)
	if cfg.PinDir == "" {
		cfg.PinDir = PinDir(t, remove...)
	}
	m, err := datapath.OpenMaps(cfg)
	if err != nil {
		t.Fatalf("OpenMaps: %v", err)
	}
	t.Cleanup(func() {
		m.Close()
		if err := m.Unpin(); err != nil {
			t.Errorf("Unpin: %v", err)
		}
	})
	return m
}

// NoErr fails the test at once on an error.
func NoErr(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// ErrIs fails the test unless err wraps target.
func ErrIs(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want one wrapping %v", err, target)
	}
}

// WantFull checks that err is datapath.ErrFull naming the option (its
// flag) an operator raises.
func WantFull(t testing.TB, err error, flag string) {
	t.Helper()
	ErrIs(t, err, datapath.ErrFull)
	if !strings.Contains(err.Error(), "raise --"+flag+" ") {
		t.Fatalf("error %q does not name --%s", err, flag)
	}
}

// Frontend parses "addr:port" into a frontend of proto.
func Frontend(s string, proto datapath.Protocol) datapath.Frontend {
	ap := netip.MustParseAddrPort(s)
	return datapath.Frontend{Addr: ap.Addr(), Port: ap.Port(), Protocol: proto}
}

// RandomID returns 6 random hex digits, for names of namespaces, cgroups
// and pin directories.
func RandomID(t testing.TB) string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// Run runs a command, failing t with its output.
func Run(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// NewNetns creates a network namespace with lo up, deleted at cleanup.
func NewNetns(t testing.TB, name string) {
	t.Helper()
	Run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	Run(t, "ip", "-n", name, "link", "set", "lo", "up")
}

// InNetns runs fn on a thread switched into the named network namespace:
// the sockets fn creates live there. The thread is discarded if it cannot
// be switched back.
func InNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// ServeTCP listens on addr in network namespace ns and answers every
// connection with name and a newline, then closes it.
func ServeTCP(t testing.TB, ns string, addr netip.AddrPort, name string) {
	t.Helper()
	var ln net.Listener
	err := InNetns(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		msg := []byte(name + "\n")
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write(msg)
			c.Close()
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

// ServeUDP answers every datagram received on addr in ns with name.
func ServeUDP(t testing.TB, ns string, addr netip.AddrPort, name string) {
	t.Helper()
	var pc net.PacketConn
	err := InNetns(ns, func() (err error) {
		pc, err = net.ListenPacket("udp", addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("listen on udp %s in %s: %v", addr, ns, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(name), from)
		}
	})
	t.Cleanup(func() { pc.Close(); wg.Wait() })
}

// Median is the median of xs (0 for none).
func Median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Round3 rounds v to 3 decimals, for figures.
func Round3(v float64) float64 { return float64(int(v*1000+0.5)) / 1000 }

// SizeOptions checks a package's size options: flags named alike, defaults
// within the bounds, each option setting its own field, and validate (the
// package's Config.Validate) accepting 0 and the bounds, refusing values
// beyond them with ErrInvalidConfig naming the flag. Values that are not a
// power of two are skipped for options in bytes (ring buffers).
func SizeOptions[C any](t *testing.T, opts []datapath.SizeOption[C], validate func(C) error) {
	t.Helper()
	flag := regexp.MustCompile(`^(max-[a-z-]+-entries|[a-z-]+-bytes)$`)
	var c C
	seen := map[*uint32]bool{}
	for _, o := range opts {
		if !flag.MatchString(o.Flag) || o.Usage == "" || o.Map == "" || o.Default < o.Min || o.Default > o.Max {
			t.Errorf("option %+v", o)
		}
		if p := o.Of(&c); seen[p] {
			t.Errorf("%s sets a field another option sets", o)
		} else {
			seen[p] = true
		}
		for _, tc := range []struct {
			v  uint32
			ok bool
		}{{0, true}, {o.Min, true}, {o.Max, true}, {o.Min - 1, o.Min == 1}, {o.Max + 1, false}} {
			if o.Unit == "bytes" && tc.ok && tc.v != 0 && tc.v&(tc.v-1) != 0 {
				continue
			}
			var c C
			*o.Of(&c) = tc.v
			err := validate(c)
			switch {
			case tc.ok && err != nil:
				t.Errorf("%s = %d: %v", o, tc.v, err)
			case !tc.ok && (!errors.Is(err, datapath.ErrInvalidConfig) || !strings.Contains(err.Error(), "--"+o.Flag)):
				t.Errorf("%s = %d: %v, want %v naming --%s", o, tc.v, err, datapath.ErrInvalidConfig, o.Flag)
			}
		}
	}
}

// PairedRatio is the median over rounds of num[i]/den[i], the ratio of two
// measurements taken in the same round.
func PairedRatio(num, den []float64) float64 {
	rs := make([]float64, len(num))
	for i := range num {
		rs[i] = num[i] / den[i]
	}
	return Median(rs)
}
