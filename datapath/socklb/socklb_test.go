package socklb

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/internal/dptest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// The socket load balancer end to end: real connects and datagrams from a
// client in the test's cgroup to servers in three "cluster" namespaces.

// lbBackend is one backend server of the environment.
type lbBackend struct {
	name    string
	cluster int
	host    int
}

func (b lbBackend) addr4(port uint16) netip.AddrPort {
	return netip.AddrPortFrom(clusterAddr4(b.cluster, b.host), port)
}

func (b lbBackend) addr6(port uint16) netip.AddrPort {
	return netip.AddrPortFrom(clusterAddr6(b.cluster, b.host), port)
}

func (b lbBackend) backend(ap netip.AddrPort, proto datapath.Protocol) datapath.Backend {
	return datapath.Backend{Addr: ap.Addr(), Port: ap.Port(), Protocol: proto, ClusterID: uint16(b.cluster)}
}

const backendPort = 8080

var (
	c1a = lbBackend{"c1-a", 1, 2}
	c1b = lbBackend{"c1-b", 1, 3}
	c2a = lbBackend{"c2-a", 2, 2}
	c3a = lbBackend{"c3-a", 3, 2}
	// allBackends with their weights (slots) in the weighted services.
	allBackends = []lbBackend{c1a, c1b, c2a, c3a}
	weights     = map[string]int{"c1-a": 1, "c1-b": 1, "c2-a": 2, "c3-a": 4}
)

// slots lists each backend weight times, in the family and protocol given.
func slots(v6 bool, proto datapath.Protocol, bs []lbBackend) []datapath.Backend {
	var out []datapath.Backend
	for _, b := range bs {
		ap := b.addr4(backendPort)
		if v6 {
			ap = b.addr6(backendPort)
		}
		for range weights[b.name] {
			out = append(out, b.backend(ap, proto))
		}
	}
	return out
}

// checkWeights fails unless every backend of bs got a share of total within
// 5 standard deviations of its weight's share (binomial): a false failure
// has a probability below 1e-6 per backend.
func checkWeights(t *testing.T, got map[string]int, bs []lbBackend) {
	t.Helper()
	total, sum := 0, 0
	for _, n := range got {
		total += n
	}
	for _, b := range bs {
		sum += weights[b.name]
	}
	var lines []string
	for _, b := range bs {
		p := float64(weights[b.name]) / float64(sum)
		share := float64(got[b.name]) / float64(total)
		tol := 5 * math.Sqrt(p*(1-p)/float64(total))
		lines = append(lines, fmt.Sprintf("%s: %d (%.3f, want %.3f ± %.3f)", b.name, got[b.name], share, p, tol))
		if math.Abs(share-p) > tol {
			t.Errorf("%s got %.3f of %d connections, want %.3f ± %.3f", b.name, share, total, p, tol)
		}
	}
	sort.Strings(lines)
	t.Logf("distribution over %d: %v", total, lines)
}

func wantOnly(t *testing.T, what string, got map[string]int, key string, n int) {
	t.Helper()
	if len(got) != 1 || got[key] != n {
		t.Errorf("%s: %v, want only %q × %d", what, got, key, n)
	}
}

func noErrors(t *testing.T, r clientResp) {
	t.Helper()
	if len(r.Errors) > 0 {
		t.Errorf("client errors: %v", r.Errors)
	}
}

// The frontends of TestSockLB, each with every backend of allBackends at
// its weight.
var (
	svcTCP  = dptest.Frontend("10.96.0.10:80", datapath.TCP)
	svcUDP  = dptest.Frontend("10.96.0.10:53", datapath.UDP)
	svcTCP6 = dptest.Frontend("[fd00:96::10]:80", datapath.TCP)
	svcUDP6 = dptest.Frontend("[fd00:96::10]:53", datapath.UDP)
)

const tcpAddr = "10.96.0.10:80"

// TestSockLB runs its cases in order on one environment (each case's
// function says what it checks): servers for every backend in every
// cluster, and the frontends above.
func TestSockLB(t *testing.T) {
	e := newLBEnv(t, 3, 2)
	for _, b := range allBackends {
		ns := e.clusterNS(b.cluster)
		dptest.ServeTCP(t, ns, b.addr4(backendPort), b.name)
		dptest.ServeTCP(t, ns, b.addr6(backendPort), b.name)
		dptest.ServeUDP(t, ns, b.addr4(backendPort), b.name)
		dptest.ServeUDP(t, ns, b.addr6(backendPort), b.name)
	}
	dptest.NoErr(t, e.maps.UpsertService(svcTCP, slots(false, datapath.TCP, allBackends)))
	dptest.NoErr(t, e.maps.UpsertService(svcUDP, slots(false, datapath.UDP, allBackends)))
	dptest.NoErr(t, e.maps.UpsertService(svcTCP6, slots(true, datapath.TCP, allBackends)))
	dptest.NoErr(t, e.maps.UpsertService(svcUDP6, slots(true, datapath.UDP, allBackends)))
	for _, c := range []struct {
		name string
		run  func(*testing.T, *lbEnv)
	}{
		{"tcp-weights-across-clusters", lbTCPWeights},
		{"udp-unconnected-replies-from-service", lbUDPUnconnected},
		{"udp-connected", lbUDPConnected},
		{"ipv6", lbIPv6},
		{"ipv4-service-from-dual-stack-socket", lbIPv4FromDualStack},
		{"other-addresses-untouched", lbOtherAddresses},
		{"removed-backend-gets-no-new-connections", lbRemovedBackend},
		{"zero-backends-refuses", lbZeroBackends},
		{"revnat-entries", lbRevNATEntries},
		{"udp-reconnect-away-forgets", lbUDPReconnectAway},
		{"getpeername-survives-reattach", lbGetpeernameReattach},
		{"detached-after-close", lbDetachedAfterClose},
	} {
		t.Run(c.name, func(t *testing.T) { c.run(t, e) })
	}
}

func lbTCPWeights(t *testing.T, e *lbEnv) {
	const n = 4000
	r := e.runClient(clientReq{Op: "tcp", Addr: tcpAddr, N: n})
	noErrors(t, r)
	checkWeights(t, r.Replies, allBackends)
	// (3) getpeername on every connected socket reads the service.
	wantOnly(t, "getpeername", r.Peers, tcpAddr, n)
}

func lbUDPUnconnected(t *testing.T, e *lbEnv) {
	const n = 2000
	r := e.runClient(clientReq{Op: "udp", Addr: "10.96.0.10:53", N: n})
	noErrors(t, r)
	wantOnly(t, "recvfrom source", r.Peers, "10.96.0.10:53", n)
	checkWeights(t, r.Replies, allBackends)
}

func lbUDPConnected(t *testing.T, e *lbEnv) {
	const n = 300
	r := e.runClient(clientReq{Op: "udp-connected", Addr: "10.96.0.10:53", N: n})
	noErrors(t, r)
	wantOnly(t, "getpeername", r.Peers, "10.96.0.10:53", n)
	if len(r.Replies) != len(allBackends) {
		t.Errorf("replies from %v, want all of %d backends", r.Replies, len(allBackends))
	}
}

func lbIPv6(t *testing.T, e *lbEnv) {
	const n = 1000
	r := e.runClient(clientReq{Op: "tcp", Addr: "[fd00:96::10]:80", N: n})
	noErrors(t, r)
	checkWeights(t, r.Replies, allBackends)
	wantOnly(t, "getpeername", r.Peers, "[fd00:96::10]:80", n)
	r = e.runClient(clientReq{Op: "udp", Addr: "[fd00:96::10]:53", N: n})
	noErrors(t, r)
	wantOnly(t, "recvfrom source", r.Peers, "[fd00:96::10]:53", n)
	checkWeights(t, r.Replies, allBackends)
	r = e.runClient(clientReq{Op: "udp-connected", Addr: "[fd00:96::10]:53", N: 100})
	noErrors(t, r)
	wantOnly(t, "getpeername", r.Peers, "[fd00:96::10]:53", 100)
}

func lbIPv4FromDualStack(t *testing.T, e *lbEnv) {
	// connect6 to ::ffff:10.96.0.10 reaches the IPv4 service's backends
	// (in v4-mapped form); getpeername6 reads the mapped service.
	const n = 400
	r := e.runClient(clientReq{Op: "tcp-mapped", Addr: tcpAddr, N: n})
	noErrors(t, r)
	checkWeights(t, r.Replies, allBackends)
	wantOnly(t, "getpeername", r.Peers, "[::ffff:10.96.0.10]:80", n)
}

func lbOtherAddresses(t *testing.T, e *lbEnv) {
	// A backend dialled directly is not a frontend: no rewrite, and
	// getpeername reads the backend itself.
	direct := c2a.addr4(backendPort).String()
	r := e.runClient(clientReq{Op: "tcp", Addr: direct, N: 20})
	noErrors(t, r)
	wantOnly(t, "replies", r.Replies, "c2-a", 20)
	wantOnly(t, "getpeername", r.Peers, direct, 20)
	// Same address, another port or protocol: not the service.
	r = e.runClient(clientReq{Op: "tcp", Addr: "10.96.0.10:81", N: 3})
	wantOnly(t, "errors", r.Errors, "ENETUNREACH", 3)
	r = e.runClient(clientReq{Op: "tcp", Addr: "10.96.0.10:53", N: 3})
	wantOnly(t, "errors", r.Errors, "ENETUNREACH", 3)
}

func lbRemovedBackend(t *testing.T, e *lbEnv) {
	rest := []lbBackend{c1a, c1b, c2a}
	dptest.NoErr(t, e.maps.UpsertService(svcTCP, slots(false, datapath.TCP, rest)))
	dptest.NoErr(t, e.maps.UpsertService(svcUDP, slots(false, datapath.UDP, rest)))
	const n = 1000
	r := e.runClient(clientReq{Op: "tcp", Addr: tcpAddr, N: n})
	noErrors(t, r)
	if r.Replies["c3-a"] != 0 {
		t.Errorf("the removed backend c3-a got %d of %d connections", r.Replies["c3-a"], n)
	}
	checkWeights(t, r.Replies, rest)
	r = e.runClient(clientReq{Op: "udp", Addr: "10.96.0.10:53", N: n})
	noErrors(t, r)
	if r.Replies["c3-a"] != 0 {
		t.Errorf("the removed backend c3-a got %d of %d datagrams", r.Replies["c3-a"], n)
	}
	// Back again.
	dptest.NoErr(t, e.maps.UpsertService(svcTCP, slots(false, datapath.TCP, allBackends)))
	r = e.runClient(clientReq{Op: "tcp", Addr: tcpAddr, N: 400})
	noErrors(t, r)
	if r.Replies["c3-a"] == 0 {
		t.Errorf("c3-a, added back, got none of 400 connections: %v", r.Replies)
	}
}

func lbZeroBackends(t *testing.T, e *lbEnv) {
	empty := dptest.Frontend("10.96.0.20:80", datapath.TCP)
	emptyUDP := dptest.Frontend("10.96.0.20:53", datapath.UDP)
	emptyTCP6 := dptest.Frontend("[fd00:96::20]:80", datapath.TCP)
	dptest.NoErr(t, e.maps.UpsertService(empty, nil))
	dptest.NoErr(t, e.maps.UpsertService(emptyUDP, nil))
	dptest.NoErr(t, e.maps.UpsertService(emptyTCP6, nil))
	r := e.runClient(clientReq{Op: "tcp", Addr: "10.96.0.20:80", N: 10})
	wantOnly(t, "tcp errors", r.Errors, "ECONNREFUSED", 10)
	r = e.runClient(clientReq{Op: "udp", Addr: "10.96.0.20:53", N: 10})
	wantOnly(t, "udp errors", r.Errors, "ECONNREFUSED", 10)
	r = e.runClient(clientReq{Op: "udp-connected", Addr: "10.96.0.20:53", N: 10})
	wantOnly(t, "connected udp errors", r.Errors, "ECONNREFUSED", 10)
	r = e.runClient(clientReq{Op: "tcp", Addr: "[fd00:96::20]:80", N: 10})
	wantOnly(t, "tcp6 errors", r.Errors, "ECONNREFUSED", 10)

	// Backends appear: the same frontend serves.
	dptest.NoErr(t, e.maps.UpsertService(empty, slots(false, datapath.TCP, []lbBackend{c2a})))
	r = e.runClient(clientReq{Op: "tcp", Addr: "10.96.0.20:80", N: 10})
	noErrors(t, r)
	wantOnly(t, "replies", r.Replies, "c2-a", 10)
	// Deleted: no longer a frontend at all, so no longer refused.
	dptest.NoErr(t, e.maps.DeleteService(empty))
	r = e.runClient(clientReq{Op: "tcp", Addr: "10.96.0.20:80", N: 3})
	wantOnly(t, "errors after delete", r.Errors, "ENETUNREACH", 3)
}

func lbRevNATEntries(t *testing.T, e *lbEnv) {
	var k [32]byte
	var v [20]byte
	n := 0
	it := e.lb.objs.CmSockRevnat.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	dptest.NoErr(t, it.Err())
	if n == 0 {
		t.Errorf("no reverse translation recorded")
	}
	if _, err := os.Stat(filepath.Join(e.maps.Config().PinDir, RevNATMapName)); err != nil {
		t.Errorf("reverse translation map not pinned: %v", err)
	}
}

func lbUDPReconnectAway(t *testing.T, e *lbEnv) {
	// A UDP socket connected to the service, then to a backend
	// directly, has that backend as its peer and source of replies.
	direct := c2a.addr4(backendPort).String()
	const n = 50
	r := e.runClient(clientReq{Op: "udp-reconnect", Addr: "10.96.0.10:53", Addr2: direct, N: n})
	noErrors(t, r)
	want := map[string]int{"1 10.96.0.10:53": n, "2 " + direct: n, "from " + direct: n}
	if !reflect.DeepEqual(r.Peers, want) {
		t.Errorf("peers %v, want %v", r.Peers, want)
	}
	wantOnly(t, "replies", r.Replies, "c2-a", n)
}

func lbGetpeernameReattach(t *testing.T, e *lbEnv) {
	h, first := e.startHolder(tcpAddr)
	if first != tcpAddr {
		t.Fatalf("getpeername right after connect: %s, want %s", first, tcpAddr)
	}
	// Detached: the kernel's own answer, the backend.
	dptest.NoErr(t, e.lb.Close())
	backend := h.peer()
	if backend == tcpAddr || !strings.HasPrefix(backend, "10.200.") {
		t.Errorf("getpeername with the programs detached: %s, want a backend's address", backend)
	}
	// Attached again (an agent restart): the pinned socket storage
	// still holds the translation.
	lb, err := Attach(e.maps, e.cgroup, Config{})
	dptest.NoErr(t, err)
	e.t.Cleanup(func() { lb.Close() })
	e.lb = lb
	if got := h.peer(); got != tcpAddr {
		t.Errorf("getpeername after re-attaching: %s, want %s", got, tcpAddr)
	}
	r := e.runClient(clientReq{Op: "tcp", Addr: tcpAddr, N: 20})
	noErrors(t, r)
}

func lbDetachedAfterClose(t *testing.T, e *lbEnv) {
	dptest.NoErr(t, e.lb.Close())
	dptest.NoErr(t, e.lb.Close()) // idempotent
	r := e.runClient(clientReq{Op: "tcp", Addr: tcpAddr, N: 3})
	wantOnly(t, "errors once detached", r.Errors, "ENETUNREACH", 3)
}

func TestAttachSockLBErrors(t *testing.T) {
	testenv.RequireRoot(t)
	m := dptest.OpenMaps(t, dptest.SmallConfig(""), RemovePins)

	_, err := Attach(m, t.TempDir(), Config{})
	dptest.ErrIs(t, err, ErrNotCgroup2)
	_, err = Attach(m, "/nonexistent/cgroup", Config{})
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing cgroup: %v, want ErrNotExist", err)
	}

	// Default cgroup: the cgroup v2 mount.
	root, err := Cgroup2Mount()
	dptest.NoErr(t, err)
	if st, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil || st.IsDir() {
		t.Fatalf("cgroup v2 mount %s has no cgroup.procs: %v", root, err)
	}

	// Two load balancers on one cgroup coexist and detach independently.
	cg := newTestCgroup(t)
	a, err := Attach(m, cg, Config{})
	dptest.NoErr(t, err)
	b, err := Attach(m, cg, Config{})
	dptest.NoErr(t, err)
	if a.Cgroup() != cg {
		t.Errorf("Cgroup() = %q, want %q", a.Cgroup(), cg)
	}
	dptest.NoErr(t, a.Close())
	dptest.NoErr(t, b.Close())

	// A pinned reverse-translation map of another size is refused, naming
	// the option that sizes it; a size out of bounds is refused before.
	_, err = Attach(m, cg, Config{MaxSockRevNAT: DefaultMaxSockRevNAT / 2})
	dptest.ErrIs(t, err, datapath.ErrIncompatiblePin)
	dptest.ErrIs(t, err, ebpf.ErrMapIncompatible)
	if !strings.Contains(err.Error(), "--max-sock-revnat-entries") {
		t.Errorf("error %q does not name --max-sock-revnat-entries", err)
	}
	_, err = Attach(m, cg, Config{MaxSockRevNAT: 1 << 30})
	dptest.ErrIs(t, err, datapath.ErrInvalidConfig)

	// Closed maps.
	dptest.NoErr(t, m.Close())
	_, err = Attach(m, cg, Config{})
	dptest.ErrIs(t, err, datapath.ErrClosed)
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/sys/fs/cgroup`:         "/sys/fs/cgroup",
		`/mnt/with\040space`:     "/mnt/with space",
		`/a\134b`:                `/a\b`,
		`/trailing\04`:           `/trailing\04`,
		`/not\999octal`:          `/not\999octal`,
		`/tab\011and\040space\\`: "/tab\tand space\\\\",
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestSockLBLayout checks the C program's map definitions against the Go
// layouts (config.go, and the mesh maps' as package datapath creates them):
// a mismatch would make MapReplacements refuse the live maps, or the
// programs misread them.
func TestSockLBLayout(t *testing.T) {
	spec, err := loadSocklb()
	dptest.NoErr(t, err)
	for _, c := range []struct {
		name       string
		typ        ebpf.MapType
		key, value uint32
	}{
		{RevNATMapName, ebpf.LRUHash, 32, 20},
		{PeerMapName, ebpf.SkStorage, 4, 40},
		{EventsMapName, ebpf.RingBuf, 0, 0},
		{MetricsMapName, ebpf.PerCPUArray, 4, 8},
	} {
		m := spec.Maps[c.name]
		if m == nil {
			t.Errorf("the programs define no map %s", c.name)
			continue
		}
		if m.Type != c.typ || m.KeySize != c.key || m.ValueSize != c.value {
			t.Errorf("map %s: %v, key %d, value %d bytes; want %v, %d, %d", c.name, m.Type, m.KeySize, m.ValueSize, c.typ, c.key, c.value)
		}
	}
	if n := len(spec.Programs); n != 8 {
		t.Errorf("%d programs, want 8", n)
	}
	var o socklbObjects
	if got := len(o.hooks()); got != len(spec.Programs) {
		t.Errorf("%d hooks attached, %d programs", got, len(spec.Programs))
	}

	// The mesh maps the programs read, as package datapath makes them.
	h, err := dptest.OpenMaps(t, dptest.SmallConfig(""), RemovePins).Handles()
	dptest.NoErr(t, err)
	defer h.Close()
	for name, live := range map[string]*ebpf.Map{datapath.ServicesMapName: h.Services, datapath.BackendsMapName: h.Backends} {
		m := spec.Maps[name]
		if m == nil {
			t.Errorf("the programs define no map %s", name)
			continue
		}
		if m.Type != live.Type() || m.KeySize != live.KeySize() || m.ValueSize != live.ValueSize() {
			t.Errorf("map %s: %v, key %d, value %d bytes; the live map: %v, %d, %d", name, m.Type, m.KeySize, m.ValueSize, live.Type(), live.KeySize(), live.ValueSize())
		}
	}
}
