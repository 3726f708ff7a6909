package wireguard

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// testLogger logs to t until the test ends (wireguard-go may still log from
// its goroutines while a device closes). WG_TEST_DEBUG=1 adds debug lines.
func testLogger(t testing.TB, node string) *slog.Logger {
	var done atomic.Bool
	t.Cleanup(func() { done.Store(true) })
	level := slog.LevelInfo
	if os.Getenv("WG_TEST_DEBUG") == "1" {
		level = slog.LevelDebug
	}
	return slog.New(&tbHandler{t: t, done: &done, level: level}).With("node", node)
}

type tbHandler struct {
	t     testing.TB
	done  *atomic.Bool
	level slog.Level
	attrs []slog.Attr
}

func (h *tbHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }
func (h *tbHandler) Handle(_ context.Context, r slog.Record) error {
	if h.done.Load() {
		return nil
	}
	var b bytes.Buffer
	th := slog.NewTextHandler(&b, &slog.HandlerOptions{Level: h.level, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}})
	th.WithAttrs(h.attrs).Handle(context.Background(), r)
	h.t.Log(strings.TrimSpace(b.String()))
	return nil
}
func (h *tbHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &tbHandler{t: h.t, done: h.done, level: h.level, attrs: append(slices.Clone(h.attrs), as...)}
}
func (h *tbHandler) WithGroup(string) slog.Handler { return h }

// TestTunnel: two nodes in two clusters, each in its own namespace, joined by
// a veth underlay. A TCP connection between pod addresses goes through the
// tunnel: the devices count the bytes, and the underlay carries nothing but
// WireGuard UDP (no TCP, no pod address) while it runs.
func TestTunnel(t *testing.T) {
	testenv.RequireRoot(t)
	a, b := twoNodes(t, nil)
	connect(t, a, b)

	st := a.dev.Status()
	if st.Implementation != ImplUserspace || st.MTU != 1440 || st.UnderlayMTU != 1500 || st.Peers != 1 || !st.Enabled {
		t.Fatalf("status: %+v", st)
	}
	link, err := a.ns.nl.LinkByName(a.dev.Name())
	if err != nil || link.Attrs().MTU != 1440 {
		t.Fatalf("device MTU: %v %v", link, err)
	}
	if r := ourRoutes(t, a.ns); len(r) != 1 || !strings.HasPrefix(r[0], "10.202.1.0/24 table 254") {
		t.Fatalf("routes on east: %v", r)
	}

	capt := startCapture(t, b, b.veth, a.pod, b.pod)
	const size = 16 << 20
	elapsed := transfer(t, a, a.podIP, b, b.podIP, size, nil)
	back := transfer(t, b, b.podIP, a, a.podIP, 1<<20, nil)
	capt.finish()
	t.Logf("%d MiB east→west pod to pod in %s (%.0f Mbit/s), 1 MiB back in %s; underlay: %s",
		size>>20, elapsed, float64(size*8)/elapsed.Seconds()/1e6, back, capt)
	if capt.tcp != 0 || capt.podAddr != 0 || capt.other != 0 {
		t.Errorf("the underlay carried more than WireGuard UDP: %s", capt)
	}
	// The capture may drop frames at this rate; the device counters below
	// account for every byte.
	if capt.wgBytes < size/2 {
		t.Errorf("the underlay carried %d bytes of WireGuard UDP for a %d-byte transfer", capt.wgBytes, size)
	}

	sa, sb := a.dev.Status(), b.dev.Status()
	if sa.BytesSent < size || sb.BytesReceived < size || sa.BytesReceived < 1<<20 || sb.BytesSent < 1<<20 {
		t.Errorf("device counters: east sent %d received %d, west sent %d received %d", sa.BytesSent, sa.BytesReceived, sb.BytesSent, sb.BytesReceived)
	}
	if len(sa.Clusters) != 1 || sa.Clusters[0].Cluster != "west" || sa.Clusters[0].LatestHandshake.IsZero() ||
		sa.Clusters[0].PeersWithoutHandshake != 0 || sa.Clusters[0].BytesSent != sa.BytesSent {
		t.Errorf("per-cluster status: %+v", sa.Clusters)
	}
	js, _ := json.Marshal(sa)
	t.Logf("status of east: %s", js)
	if strings.Contains(string(js), "privateKey") {
		t.Fatal("status mentions a private key")
	}

	// Close removes everything; the pod route is gone, so the pod address
	// is no longer reachable through the tunnel.
	for _, n := range []*testNode{a, b} {
		name := n.dev.Name()
		if err := n.dev.Close(); err != nil {
			t.Fatalf("close: %v", err)
		}
		assertGone(t, n.ns, name)
	}
}

// TestNodeEncryption: with node encryption, TCP between the node IPs also
// goes through the tunnel, while the device's own UDP still takes the
// underlay. The namespaces start with a strict reverse-path filter, which
// drops the ARP and UDP of nodes routed through the device: Open makes it
// loose on the underlay, and Close puts it back.
func TestNodeEncryption(t *testing.T) {
	testenv.RequireRoot(t)
	strict := func(n *testNode) {
		n.ns.do(t, func() error {
			for _, conf := range []string{"all", "default", n.veth} {
				if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+conf+"/rp_filter", []byte("1"), 0); err != nil {
					return err
				}
			}
			return nil
		})
	}
	a, b := twoNodesPrepared(t, strict, func(c *Config) { c.NodeEncryption = true })
	if got := rpFilter(t, a, a.veth); got != "2" {
		t.Fatalf("rp_filter of the underlay: %s, want 2 (loose)", got)
	}
	connect(t, a, b)
	capt := startCapture(t, b, b.veth, a.pod, b.pod)
	const size = 4 << 20
	elapsed := transfer(t, a, a.underlay, b, b.underlay, size, nil)
	capt.finish()
	t.Logf("%d MiB node to node in %s; underlay: %s", size>>20, elapsed, capt)
	if capt.tcp != 0 || capt.other != 0 || capt.wgBytes < size/2 {
		t.Errorf("node traffic was not encrypted: %s", capt)
	}
	if r := ourRoutes(t, a.ns); !slices.Contains(r, "192.168.77.2/32 table 7680") || !slices.Contains(r, "10.202.1.0/24 table 254") {
		t.Errorf("routes on east: %v", r)
	}
	for _, n := range []*testNode{a, b} {
		name := n.dev.Name()
		n.dev.Close()
		assertGone(t, n.ns, name)
		if got := rpFilter(t, n, n.veth); got != "1" {
			t.Errorf("rp_filter of %s's underlay after Close: %s, want 1 again", n.name, got)
		}
	}
}

// reconcileFixture is a device in a namespace of its own, and the checks
// TestReconcile makes of it.
type reconcileFixture struct {
	t    *testing.T
	n    *testNS
	name string
	dev  *Device
}

// reconcilePeer is node i of cluster, with a pod CIDR of each family.
func reconcilePeer(t *testing.T, cluster string, i int) Peer {
	return Peer{Cluster: cluster, Node: cluster + "-" + string(rune('a'+i)), PublicKey: newKey(t),
		Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(len(cluster)*10 + i)}), 0),
		PodCIDRs: []netip.Prefix{
			netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(len(cluster)), byte(i), 0}), 24),
			netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, byte(len(cluster)), byte(i)}), 64),
		}}
}

// state is the device's peer keys and our routes, sorted.
func (f *reconcileFixture) state() (keys []string, routes []string) {
	d, err := f.dev.wg.Device(f.name)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, p := range d.Peers {
		keys = append(keys, p.PublicKey.String())
	}
	slices.Sort(keys)
	routes = ourRoutes(f.t, f.n)
	slices.Sort(routes)
	return keys, routes
}

// expect checks that the device has exactly peers, and their pod CIDRs'
// routes.
func (f *reconcileFixture) expect(step string, peers []Peer) {
	f.t.Helper()
	var keys, routes []string
	for _, p := range peers {
		keys = append(keys, p.PublicKey)
		for _, c := range p.PodCIDRs {
			routes = append(routes, c.String()+" table 254")
		}
	}
	slices.Sort(keys)
	slices.Sort(routes)
	gotKeys, gotRoutes := f.state()
	if !slices.Equal(keys, gotKeys) || !slices.Equal(routes, gotRoutes) {
		f.t.Fatalf("%s:\n peers  %v\n want   %v\n routes %v\n want   %v", step, gotKeys, keys, gotRoutes, routes)
	}
}

// set gives the device peers, none of them to be rejected, and expects them.
func (f *reconcileFixture) set(step string, peers []Peer) {
	f.t.Helper()
	if rej, err := f.dev.SetPeers(peers); err != nil || len(rej) > 0 {
		f.t.Fatalf("%s: %v %v", step, rej, err)
	}
	f.expect(step, peers)
}

// TestReconcile: peers follow the desired set. A node removed takes its peer
// and routes with it; a cluster removed takes all its nodes; a changed key
// replaces the peer; a peer configured by hand is removed; a local pod CIDR
// that grows over a peer's rejects it; nothing is left after Close.
func TestReconcile(t *testing.T) {
	testenv.RequireRoot(t)
	n := newNS(t)
	name := uniqueDevName()
	dev, err := Open(Config{DeviceName: name, PrivateKeyFile: t.TempDir() + "/wg.key", NetNS: n.path, UnderlayMTU: 9000,
		UnderlayIPv6: true, LocalPodCIDRs: []netip.Prefix{pfx("10.100.0.0/24")}, Logger: testLogger(t, "local")})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if dev.MTU() != 8920 {
		t.Fatalf("MTU over a 9000-byte IPv6 underlay: %d", dev.MTU())
	}
	f := &reconcileFixture{t: t, n: n, name: name, dev: dev}
	west := []Peer{reconcilePeer(t, "west", 0), reconcilePeer(t, "west", 1), reconcilePeer(t, "west", 2)}
	north := []Peer{reconcilePeer(t, "north", 0), reconcilePeer(t, "north", 1)}

	all := slices.Concat(west, north)
	f.set("two clusters", all)
	st := dev.Status()
	if st.Peers != 5 || len(st.Clusters) != 2 || st.Clusters[0].Cluster != "north" || st.Clusters[0].Peers != 2 ||
		st.Clusters[1].Peers != 3 || st.Clusters[1].PeersWithoutHandshake != 3 {
		t.Fatalf("status: %+v", st)
	}

	// Same set again: nothing to do, the peers (and their sessions) stay.
	before, _ := dev.wg.Device(name)
	f.set("unchanged", all)
	after, _ := dev.wg.Device(name)
	if len(before.Peers) != len(after.Peers) {
		t.Fatal("peers changed on a no-op")
	}

	f.set("west-b removed", []Peer{west[0], west[2], north[0], north[1]})
	f.set("north removed", []Peer{west[0], west[2]})
	west[2].PublicKey = newKey(t) // west-c rotated its key
	west[0].PodCIDRs = west[0].PodCIDRs[:1]
	west[0].Endpoint = netip.MustParseAddrPort("192.0.2.99:4000")
	f.set("west-c rotated, west-a moved and lost its IPv6 CIDR", []Peer{west[0], west[2]})
	d, _ := dev.wg.Device(name)
	for _, p := range d.Peers {
		if p.PublicKey.String() == west[0].PublicKey && (p.Endpoint.String() != "192.0.2.99:4000" || len(p.AllowedIPs) != 1) {
			t.Fatalf("west-a not updated: %+v", p)
		}
		if p.PersistentKeepaliveInterval != 0 {
			t.Fatalf("keepalive left on after the nudge: %+v", p)
		}
	}

	// A peer configured by hand is not ours: removed.
	stray, _ := wgtypes.GeneratePrivateKey()
	if err := dev.wg.ConfigureDevice(name, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: stray.PublicKey()}}}); err != nil {
		t.Fatal(err)
	}
	f.set("stray removed", []Peer{west[0], west[2]})

	// The local pod CIDR grows over west-a's: west-a is rejected.
	rej, err := dev.SetLocalPodCIDRs([]netip.Prefix{pfx("10.100.0.0/24"), pfx("10.4.0.0/24")})
	if err != nil || len(rej) != 1 || rej[0].Node != "west-a" {
		t.Fatalf("local CIDRs: %v %v", rej, err)
	}
	f.expect("west-a shadowed by a local CIDR", []Peer{west[2]})

	f.set("everything removed", nil)
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, n, name)
}

// TestOpenOverLeftovers: what a crashed run leaves (its TUN goes with the
// process): a socket file nobody serves, and its node-encryption rules.
// Open clears both, and Close leaves nothing.
func TestOpenOverLeftovers(t *testing.T) {
	testenv.RequireRoot(t)
	n := newNS(t)
	name := uniqueDevName()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: uapiSocket(name), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	stale := netlink.NewRule()
	stale.Priority, stale.Table = DefaultRulePriority+1, DefaultNodeRouteTable
	if err := n.nl.RuleAdd(stale); err != nil {
		t.Fatal(err)
	}
	stale = netlink.NewRule()
	stale.Priority, stale.Table, stale.IPProto = DefaultRulePriority, 254, 17
	stale.Sport = netlink.NewRulePortRange(DefaultListenPort, DefaultListenPort)
	if err := n.nl.RuleAdd(stale); err != nil {
		t.Fatal(err)
	}
	dev, err := Open(Config{DeviceName: name, PrivateKeyFile: t.TempDir() + "/wg.key", NetNS: n.path, UnderlayMTU: 9000,
		UnderlayIPv6: true, LocalPodCIDRs: []netip.Prefix{pfx("10.100.0.0/24")}, Logger: testLogger(t, "local")})
	if err != nil {
		t.Fatalf("open over leftovers: %v", err)
	}
	if rej, err := dev.SetPeers([]Peer{reconcilePeer(t, "west", 0)}); err != nil || len(rej) > 0 {
		t.Fatal(rej, err)
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, n, name)
}

// TestStaleDevice: a leftover interface of our name (a kernel device left
// by a crash; here a veth) is replaced at Open.
func TestStaleDevice(t *testing.T) {
	testenv.RequireRoot(t)
	n := newNS(t)
	name := uniqueDevName()
	if err := n.nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
		t.Fatal(err)
	}
	dev, err := Open(Config{DeviceName: name, PrivateKeyFile: t.TempDir() + "/k", NetNS: n.path, UnderlayMTU: 1500, Logger: testLogger(t, "n")})
	if err != nil {
		t.Fatal(err)
	}
	link, err := n.nl.LinkByName(name)
	if err != nil || link.Type() != "tuntap" {
		t.Fatalf("device not replaced: %v %v", link, err)
	}
	// A second device of that name, even in another namespace, is refused:
	// the UAPI socket directory is shared.
	other := newNS(t)
	if _, err := Open(Config{DeviceName: name, PrivateKeyFile: t.TempDir() + "/k", NetNS: other.path, UnderlayMTU: 1500}); err == nil ||
		!strings.Contains(err.Error(), "unique") {
		t.Fatalf("a second device named %s: %v", name, err)
	} else {
		t.Log(err)
	}
	dev.Close()
	assertGone(t, n, name)
	assertGone(t, other, name)
}

// TestBadPeers: invalid keys and overlapping CIDRs are rejected with a
// clear reason and configure nothing; the valid peers are configured.
func TestBadPeers(t *testing.T) {
	testenv.RequireRoot(t)
	n := newNS(t)
	name := uniqueDevName()
	dev, err := Open(Config{DeviceName: name, PrivateKeyFile: t.TempDir() + "/k", NetNS: n.path, UnderlayMTU: 1500,
		LocalPodCIDRs: []netip.Prefix{pfx("10.1.0.0/24")}, Logger: testLogger(t, "local")})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	good := Peer{Cluster: "west", Node: "good", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.1:51871"),
		PodCIDRs: []netip.Prefix{pfx("10.2.0.0/24")}}
	bad := []Peer{
		{Cluster: "west", Node: "badkey", PublicKey: "AAAA", Endpoint: netip.MustParseAddrPort("192.0.2.2:51871"), PodCIDRs: []netip.Prefix{pfx("10.3.0.0/24")}},
		{Cluster: "west", Node: "overlaps-local", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.3:51871"), PodCIDRs: []netip.Prefix{pfx("10.1.0.0/16")}},
		{Cluster: "west", Node: "overlaps-good", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.4:51871"), PodCIDRs: []netip.Prefix{pfx("10.4.0.0/24"), pfx("10.2.0.128/25")}},
		{Cluster: "west", Node: "same-key", PublicKey: good.PublicKey, Endpoint: netip.MustParseAddrPort("192.0.2.5:51871"), PodCIDRs: []netip.Prefix{pfx("10.5.0.0/24")}},
	}
	if _, err := dev.SetPeers([]Peer{good}); err != nil {
		t.Fatal(err)
	}
	rej, err := dev.SetPeers(append([]Peer{good}, bad...))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rej {
		t.Log(r)
	}
	if len(rej) != len(bad) {
		t.Fatalf("rejected %d, want %d", len(rej), len(bad))
	}
	d, _ := dev.wg.Device(name)
	if len(d.Peers) != 1 || d.Peers[0].PublicKey.String() != good.PublicKey || len(d.Peers[0].AllowedIPs) != 1 {
		t.Fatalf("device peers: %+v", d.Peers)
	}
	if r := ourRoutes(t, n); len(r) != 1 || r[0] != "10.2.0.0/24 table 254" {
		t.Fatalf("routes: %v (the rejected peers' CIDRs, such as 10.4.0.0/24, must not be routed)", r)
	}
	st := dev.Status()
	if len(st.Rejected) != len(bad) || !strings.Contains(st.Rejected[0].Reason, "invalid public key") {
		t.Fatalf("status: %+v", st.Rejected)
	}
}

// TestRotateKeyDuringTransfer: east rotates its key in the middle of a TCP
// transfer to west; west learns the new key (as sync would deliver it) and
// the transfer completes, every byte counted.
func TestRotateKeyDuringTransfer(t *testing.T) {
	testenv.RequireRoot(t)
	// How long the new key takes to reach west: at once, a typical sync
	// propagation, and slower than TCP's first retransmission timeout.
	for _, delay := range []time.Duration{0, 100 * time.Millisecond, time.Second} {
		t.Run(delay.String(), func(t *testing.T) { rotateDuringTransfer(t, delay) })
	}
}

func rotateDuringTransfer(t *testing.T, syncDelay time.Duration) {
	a, b := twoNodes(t, nil)
	connect(t, a, b)
	oldKey := a.dev.PublicKey()
	size := int64(64 << 20)
	if testenv.RaceEnabled {
		size = 16 << 20 // wireguard-go is ten times slower under the race detector
	}
	var (
		once        sync.Once
		rotated     = make(chan time.Time, 1)
		lastRead    atomic.Int64
		maxGap      atomic.Int64
		rotateError atomic.Value
	)
	retransBefore := tcpRetrans(t, a.ns)
	elapsed := transfer(t, a, a.podIP, b, b.podIP, size, func(got int64) {
		now := time.Now().UnixNano()
		if prev := lastRead.Swap(now); prev != 0 && now-prev > maxGap.Load() {
			maxGap.Store(now - prev)
		}
		if got > size/3 {
			once.Do(func() {
				go func() {
					pub, err := a.dev.RotateKey()
					if err != nil {
						rotateError.Store(err)
						return
					}
					at := time.Now()
					<-time.After(syncDelay) // the sync latency being modelled (a delay, not a wait on a condition)
					p := a.peer()
					p.PublicKey = pub
					if _, err := b.dev.SetPeers([]Peer{p}); err != nil {
						rotateError.Store(err)
					}
					rotated <- at
				}()
			})
		}
	})
	if err := rotateError.Load(); err != nil {
		t.Fatal(err)
	}
	var rotatedAt time.Time
	select {
	case rotatedAt = <-rotated:
	default:
		t.Fatal("the key was not rotated during the transfer")
	}
	retrans := tcpRetrans(t, a.ns) - retransBefore
	t.Logf("%d MiB with a key rotation (west learned the new key %s later): %s; longest pause %s; TCP segments retransmitted by east: %d",
		size>>20, syncDelay, elapsed, time.Duration(maxGap.Load()).Round(time.Millisecond), retrans)
	if a.dev.PublicKey() == oldKey {
		t.Fatal("key unchanged")
	}
	// The new key is the one on disk, and the one west has.
	k, _, err := LoadOrCreateKey(a.keyFile, nil)
	if err != nil || k.PublicKey().String() != a.dev.PublicKey() {
		t.Fatalf("key file after rotation: %v", err)
	}
	sb := b.dev.Status()
	if sb.Peers != 1 || !sb.Clusters[0].LatestHandshake.After(rotatedAt) {
		t.Fatalf("west status: %+v", sb)
	}
	if st := a.dev.Status(); st.KeyRotatedAt.IsZero() || st.PublicKey != a.dev.PublicKey() {
		t.Fatalf("east status: %+v", st)
	}
}

// TestImplementationChoice: "userspace" forces wireguard-go; "kernel" uses
// the kernel module or fails saying so (this machine has none); "auto" is
// the kernel's when it can be.
func TestImplementationChoice(t *testing.T) {
	testenv.RequireRoot(t)
	n := newNS(t)
	cfg := Config{DeviceName: uniqueDevName(), PrivateKeyFile: t.TempDir() + "/k", NetNS: n.path, UnderlayMTU: 1500, Logger: testLogger(t, "n")}

	cfg.Implementation = ImplUserspace
	dev, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st := dev.Status(); st.Implementation != ImplUserspace {
		t.Fatalf("forced userspace: %+v", st)
	}
	dev.Close()
	assertGone(t, n, cfg.DeviceName)

	cfg.Implementation = ImplKernel
	dev, err = Open(cfg)
	if err != nil {
		if !strings.Contains(err.Error(), "creating kernel device") {
			t.Fatalf("kernel refused without a clear error: %v", err)
		}
		t.Logf("no kernel WireGuard here: %v", err)
		assertGone(t, n, cfg.DeviceName)
		return
	}
	defer dev.Close()
	if st := dev.Status(); st.Implementation != ImplKernel || st.MTU != 1440 {
		t.Fatalf("kernel: %+v", st)
	}
	p := Peer{Cluster: "west", Node: "w", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("192.0.2.1:0"), PodCIDRs: []netip.Prefix{pfx("10.2.0.0/24")}}
	if rej, err := dev.SetPeers([]Peer{p}); err != nil || len(rej) > 0 {
		t.Fatal(rej, err)
	}
	if st := dev.Status(); st.Peers != 1 {
		t.Fatalf("kernel peers: %+v", st)
	}
	dev.Close()
	assertGone(t, n, cfg.DeviceName)
}
