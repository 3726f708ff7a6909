package wireguard

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
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

	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Test topology: each "node" is a network namespace with an underlay veth
// (192.168.77.0/24 between two nodes), the node's pod address (in its pod
// CIDR) on lo, and a WireGuard device with a unique name.

type testNS struct {
	name string
	path string
	h    netns.NsHandle
	nl   *netlink.Handle
}

// newNS creates an unnamed network namespace, which lives as long as its
// handle (and the devices in it): a test killed halfway leaves nothing behind.
// Its path for Config.NetNS is the handle under /proc/<pid>/fd.
func newNS(t testing.TB) *testNS {
	t.Helper()
	var h netns.NsHandle
	err := nsRunner{}.doLocked(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		h, err = netns.New() // moves this thread into it
		if err != nil {
			return err
		}
		return netns.Set(orig)
	})
	if err != nil {
		t.Fatalf("creating a network namespace: %v", err)
	}
	n := &testNS{name: fmt.Sprintf("netns fd %d", int(h)), path: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(h)), h: h}
	t.Cleanup(func() {
		if n.nl != nil {
			n.nl.Close()
		}
		h.Close()
	})
	n.nl, err = netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	lo, err := n.nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.nl.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return n
}

// doLocked runs fn on a thread that is discarded afterwards (fn may leave it
// in any namespace).
func (nsRunner) doLocked(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- fn()
	}()
	return <-errc
}

// do runs fn inside the namespace.
func (n *testNS) do(t testing.TB, fn func() error) {
	t.Helper()
	if err := (nsRunner{h: n.h, set: true}).do(fn); err != nil {
		t.Fatal(err)
	}
}

func (n *testNS) addAddr(t testing.TB, link netlink.Link, a string) {
	t.Helper()
	addr, err := netlink.ParseAddr(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.nl.AddrAdd(link, addr); err != nil {
		t.Fatalf("adding %s to %s: %v", a, link.Attrs().Name, err)
	}
}

type testNode struct {
	ns       *testNS
	cluster  string
	name     string
	underlay netip.Addr
	veth     string
	pod      netip.Prefix
	podIP    netip.Addr
	keyFile  string
	dev      *Device
}

var devSeq atomic.Int32

func uniqueDevName() string {
	return fmt.Sprintf("cmwg%d_%d", os.Getpid()%100000, devSeq.Add(1))
}

// twoNodes builds two nodes in clusters east and west joined by a veth, and
// opens a WireGuard device on each (cfg adjusts their configs).
func twoNodes(t testing.TB, cfg func(*Config)) (a, b *testNode) {
	t.Helper()
	return twoNodesPrepared(t, nil, cfg)
}

// twoNodesPrepared calls prepare on each node before opening its device.
func twoNodesPrepared(t testing.TB, prepare func(*testNode), cfg func(*Config)) (a, b *testNode) {
	t.Helper()
	a = &testNode{ns: newNS(t), cluster: "east", name: "east-1", underlay: netip.MustParseAddr("192.168.77.1"), veth: "ula",
		pod: pfx("10.201.1.0/24"), podIP: netip.MustParseAddr("10.201.1.1")}
	b = &testNode{ns: newNS(t), cluster: "west", name: "west-1", underlay: netip.MustParseAddr("192.168.77.2"), veth: "ulb",
		pod: pfx("10.202.1.0/24"), podIP: netip.MustParseAddr("10.202.1.1")}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a.veth, MTU: 1500}, PeerName: b.veth, PeerNamespace: netlink.NsFd(b.ns.h)}
	if err := a.ns.nl.LinkAdd(veth); err != nil {
		t.Fatalf("creating the underlay veth: %v", err)
	}
	for _, n := range []*testNode{a, b} {
		l, err := n.ns.nl.LinkByName(n.veth)
		if err != nil {
			t.Fatal(err)
		}
		n.ns.addAddr(t, l, n.underlay.String()+"/24")
		if err := n.ns.nl.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		// The pod address lives on lo (this kernel has no dummy driver).
		lo, err := n.ns.nl.LinkByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		n.ns.addAddr(t, lo, n.podIP.String()+"/32")
		if prepare != nil {
			prepare(n)
		}
		n.keyFile = filepath.Join(t.TempDir(), "wg.key")
		c := Config{DeviceName: uniqueDevName(), PrivateKeyFile: n.keyFile, NetNS: n.ns.path, NodeIP: n.underlay,
			LocalPodCIDRs: []netip.Prefix{n.pod}, Logger: testLogger(t, n.name)}
		if cfg != nil {
			cfg(&c)
		}
		n.dev, err = Open(c)
		if err != nil {
			t.Fatalf("opening the device of %s: %v", n.name, err)
		}
		t.Cleanup(func() { n.dev.Close() })
	}
	return a, b
}

// peer is n as a remote peer (what sync would deliver).
func (n *testNode) peer() Peer {
	return Peer{Cluster: n.cluster, Node: n.name, PublicKey: n.dev.PublicKey(),
		Endpoint: netip.AddrPortFrom(n.underlay, DefaultListenPort), PodCIDRs: []netip.Prefix{n.pod}}
}

func connect(t testing.TB, a, b *testNode) {
	t.Helper()
	start := time.Now()
	for _, p := range [][2]*testNode{{a, b}, {b, a}} {
		if rej, err := p[0].dev.SetPeers([]Peer{p[1].peer()}); err != nil || len(rej) > 0 {
			t.Fatalf("SetPeers on %s: %v %v", p[0].name, rej, err)
		}
	}
	// Adding a peer starts a handshake at once. When both sides start one
	// at the same moment the handshakes collide and WireGuard settles it
	// with its retry, 5 s later (a generous deadline: a few retries on a
	// loaded machine).
	testenv.WaitFor(t, time.Minute, "the first handshake", func() bool {
		for _, n := range []*testNode{a, b} {
			st := n.dev.Status()
			if len(st.Clusters) != 1 || st.Clusters[0].LatestHandshake.IsZero() {
				return false
			}
		}
		return true
	})
	t.Logf("peers configured and handshake done in %s", time.Since(start).Round(time.Millisecond))
}

// transfer sends size bytes over TCP from (from, src) to (to, dst) and
// returns how long it took, for the log and the figures (TestFigures; no
// test asserts it); the receiver counts every byte. onProgress, if set, is
// called with the bytes received so far after each read. The deadlines only
// end a transfer that hangs.
func transfer(t testing.TB, from *testNode, src netip.Addr, to *testNode, dst netip.Addr, size int64, onProgress func(int64)) time.Duration {
	t.Helper()
	var l net.Listener
	to.ns.do(t, func() error {
		var err error
		l, err = net.Listen("tcp", netip.AddrPortFrom(dst, 0).String())
		return err
	})
	defer l.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		var n int64
		for {
			k, err := c.Read(buf)
			n += int64(k)
			if onProgress != nil && k > 0 {
				onProgress(n)
			}
			if err != nil {
				break
			}
		}
		got <- n
	}()
	var c net.Conn
	from.ns.do(t, func() error {
		var err error
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: 30 * time.Second}
		c, err = d.Dial("tcp", l.Addr().String())
		return err
	})
	start := time.Now()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := io.CopyN(c, zeroReader{}, size); err != nil {
		t.Fatalf("sending: %v", err)
	}
	c.(*net.TCPConn).CloseWrite()
	var n int64
	select {
	case n = <-got:
	case <-time.After(2 * time.Minute):
		t.Fatal("receiver did not finish")
	}
	elapsed := time.Since(start)
	c.Close()
	if n != size {
		t.Fatalf("received %d bytes, sent %d", n, size)
	}
	return elapsed
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// capture counts the frames on an interface with an AF_PACKET socket,
// classified by what a WireGuard underlay may carry.
type capture struct {
	fd      int
	stop    atomic.Bool
	done    chan struct{}
	port    uint16
	pods    []netip.Prefix
	mu      sync.Mutex
	wgUDP   int // UDP to or from the WireGuard port
	wgBytes int64
	tcp     int // TCP of any kind (must be none)
	podAddr int // an IP header with a pod address (must be none)
	other   int // any other IP packet
	arp     int
	ipv6    int // ND, MLD...
}

func startCapture(t testing.TB, n *testNode, ifname string, pods ...netip.Prefix) *capture {
	t.Helper()
	c := &capture{done: make(chan struct{}), port: DefaultListenPort, pods: pods}
	n.ns.do(t, func() error {
		link, err := n.ns.nl.LinkByName(ifname)
		if err != nil {
			return err
		}
		proto := htons(unix.ETH_P_ALL)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(proto))
		if err != nil {
			return err
		}
		c.fd = fd
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50000})
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: link.Attrs().Index})
	})
	go c.run()
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *capture) run() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for !c.stop.Load() {
		n, _, err := unix.Recvfrom(c.fd, buf, unix.MSG_TRUNC)
		if err != nil {
			continue
		}
		c.classify(buf[:min(n, len(buf))], n) // n: the frame's length, even when truncated (GSO)
	}
}

func (c *capture) classify(f []byte, length int) {
	if len(f) < 14 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ip := f[14:]
	var src, dst netip.Addr
	var proto byte
	var l4 []byte
	switch binary.BigEndian.Uint16(f[12:14]) {
	case unix.ETH_P_ARP:
		c.arp++
		return
	case unix.ETH_P_IP:
		if len(ip) < 20 {
			return
		}
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		proto, l4 = ip[9], ip[int(ip[0]&0xf)*4:]
	case unix.ETH_P_IPV6:
		if len(ip) < 40 {
			return
		}
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		proto, l4 = ip[6], ip[40:]
		if proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_UDP {
			c.ipv6++
			return
		}
	default:
		c.other++
		return
	}
	for _, p := range c.pods {
		if p.Contains(src) || p.Contains(dst) {
			c.podAddr++
		}
	}
	switch {
	case proto == unix.IPPROTO_TCP:
		c.tcp++
	case proto == unix.IPPROTO_UDP && len(l4) >= 8 &&
		(binary.BigEndian.Uint16(l4[0:2]) == c.port || binary.BigEndian.Uint16(l4[2:4]) == c.port):
		c.wgUDP++
		c.wgBytes += int64(length)
	default:
		c.other++
	}
}

func (c *capture) finish() *capture {
	c.stop.Store(true)
	<-c.done
	unix.Close(c.fd)
	return c
}

func (c *capture) String() string {
	return fmt.Sprintf("WireGuard UDP %d frames (%d bytes), TCP %d, pod addresses %d, other IP %d, ARP %d, IPv6 control %d",
		c.wgUDP, c.wgBytes, c.tcp, c.podAddr, c.other, c.arp, c.ipv6)
}

// tcpRetrans reads Tcp RetransSegs of the namespace.
func tcpRetrans(t testing.TB, n *testNS) int64 {
	var v int64 = -1
	n.do(t, func() error {
		f, err := os.Open("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		defer f.Close()
		var header []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) == 0 || fields[0] != "Tcp:" {
				continue
			}
			if header == nil {
				header = fields
				continue
			}
			for i, h := range header {
				if h == "RetransSegs" && i < len(fields) {
					v, err = strconv.ParseInt(fields[i], 10, 64)
					return err
				}
			}
		}
		return fmt.Errorf("no RetransSegs in /proc/net/snmp")
	})
	return v
}

// ourRoutes lists the routes the package installed in the namespace.
func ourRoutes(t testing.TB, n *testNS) []string {
	t.Helper()
	routes, err := n.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: RouteProtocol},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range routes {
		out = append(out, fmt.Sprintf("%s table %d", r.Dst, r.Table))
	}
	return out
}

// assertGone checks that nothing of the device is left: no interface, no
// route, no rule, no UAPI socket.
func assertGone(t testing.TB, n *testNS, name string) {
	t.Helper()
	if _, err := n.nl.LinkByName(name); err == nil {
		t.Errorf("device %s still exists", name)
	}
	if r := ourRoutes(t, n); len(r) > 0 {
		t.Errorf("routes left behind: %v", r)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		for _, prio := range []int{DefaultRulePriority, DefaultRulePriority + 1} {
			rules, err := n.nl.RuleListFiltered(fam, &netlink.Rule{Priority: prio}, netlink.RT_FILTER_PRIORITY)
			if err != nil {
				t.Fatal(err)
			}
			if len(rules) > 0 {
				t.Errorf("rules left behind: %v", rules)
			}
		}
	}
	if _, err := os.Stat(uapiSocket(name)); err == nil {
		t.Errorf("UAPI socket %s left behind", uapiSocket(name))
	}
}

func rpFilter(t testing.TB, n *testNode, conf string) string {
	var v []byte
	n.ns.do(t, func() error {
		var err error
		v, err = os.ReadFile("/proc/sys/net/ipv4/conf/" + conf + "/rp_filter")
		return err
	})
	return strings.TrimSpace(string(v))
}
