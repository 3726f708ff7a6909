package localmesh

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/wireguard"
)

// trNode is the node-1 of one cluster of the traffic test: a network
// namespace holding the node's IP on the underlay veth, its pod address on
// lo, and the agent's WireGuard device.
type trNode struct {
	name, device, veth string
	id                 int
	nodeIP, podIP      netip.Addr
	podCIDR            netip.Prefix
	keysDir            string
	ns                 netns.NsHandle
	nl                 *netlink.Handle
	wg                 *wireguard.Agent
}

// newNodeNS creates an unnamed network namespace with lo up; it lives as
// long as its handle (closed at cleanup, after the mesh has stopped).
func newNodeNS(t *testing.T, n *trNode) {
	t.Helper()
	var err error
	if n.ns, err = podnet.NewNetns(); err != nil {
		t.Fatalf("creating %s's namespace: %v", n.name, err)
	}
	t.Cleanup(func() { n.ns.Close() })
	if n.nl, err = netlink.NewHandleAt(n.ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.nl.Close() })
	lo, err := n.nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.nl.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	if err := n.nl.AddrAdd(lo, &netlink.Addr{IPNet: netlink.NewIPNet(n.podIP.AsSlice())}); err != nil {
		t.Fatalf("pod address on %s: %v", n.name, err)
	}
}

// wgCounters are the device's byte counters: the interface's (plaintext)
// and the peers' (on the wire).
func (n *trNode) wgCounters(t *testing.T) (ifTx, ifRx, wireTx, wireRx int64) {
	t.Helper()
	l, err := n.nl.LinkByName(n.device)
	if err != nil {
		t.Fatalf("%s: %v", n.device, err)
	}
	st := n.wg.Status()
	s := l.Attrs().Statistics
	return int64(s.TxBytes), int64(s.RxBytes), st.BytesSent, st.BytesReceived
}

// underlayCapture classifies the frames of the underlay veth (AF_PACKET).
type underlayCapture struct {
	fd                       int
	stop                     atomic.Bool
	done                     chan struct{}
	pods                     []netip.Prefix
	wgUDP, tcp, podAddr, oth int
	wgBytes                  int64
}

func startUnderlayCapture(t *testing.T, n *trNode, pods ...netip.Prefix) *underlayCapture {
	t.Helper()
	c := &underlayCapture{done: make(chan struct{}), pods: pods}
	link, err := n.nl.LinkByName(n.veth)
	if err != nil {
		t.Fatal(err)
	}
	proto := uint16(unix.ETH_P_ALL)<<8 | uint16(unix.ETH_P_ALL)>>8
	err = podnet.InNetns(n.ns, func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(proto))
		if err != nil {
			return err
		}
		c.fd = fd
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20)
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50000})
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: link.Attrs().Index})
	})
	if err != nil {
		t.Fatalf("capture on %s: %v", n.veth, err)
	}
	go func() {
		defer close(c.done)
		buf := make([]byte, 65536)
		for !c.stop.Load() {
			k, _, err := unix.Recvfrom(c.fd, buf, unix.MSG_TRUNC)
			if err == nil {
				c.classify(buf[:min(k, len(buf))], k)
			}
		}
	}()
	return c
}

// classify counts an Ethernet frame; length is its full length (GSO frames
// are truncated to the buffer). ARP and IPv6 control traffic are ignored.
func (c *underlayCapture) classify(f []byte, length int) {
	if len(f) < 14+20 {
		return
	}
	var src, dst netip.Addr
	var proto byte
	var l4 []byte
	ip := f[14:]
	switch binary.BigEndian.Uint16(f[12:14]) {
	case unix.ETH_P_ARP:
		return
	case unix.ETH_P_IP:
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		proto, l4 = ip[9], ip[int(ip[0]&0xf)*4:]
	case unix.ETH_P_IPV6:
		if len(ip) < 40 {
			return
		}
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		proto, l4 = ip[6], ip[40:]
		if proto != unix.IPPROTO_TCP && proto != unix.IPPROTO_UDP {
			return
		}
	default:
		c.oth++
		return
	}
	for _, p := range c.pods {
		if p.Contains(src) || p.Contains(dst) {
			c.podAddr++
		}
	}
	port := uint16(wireguard.DefaultListenPort)
	switch {
	case proto == unix.IPPROTO_TCP:
		c.tcp++
	case proto == unix.IPPROTO_UDP && len(l4) >= 8 &&
		(binary.BigEndian.Uint16(l4[0:2]) == port || binary.BigEndian.Uint16(l4[2:4]) == port):
		c.wgUDP++
		c.wgBytes += int64(length)
	default:
		c.oth++
	}
}

func (c *underlayCapture) finish() {
	c.stop.Store(true)
	<-c.done
	unix.Close(c.fd)
}

func (c *underlayCapture) String() string {
	return fmt.Sprintf("WireGuard UDP %d frames (%d bytes), TCP %d, pod addresses %d, other %d", c.wgUDP, c.wgBytes, c.tcp, c.podAddr, c.oth)
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// podTransfer sends size bytes over TCP from from's pod address to to's and
// returns how many bytes to's listener received.
func podTransfer(t *testing.T, from, to *trNode, size int64) int64 {
	t.Helper()
	var l net.Listener
	if err := podnet.InNetns(to.ns, func() error {
		var err error
		l, err = net.Listen("tcp", netip.AddrPortFrom(to.podIP, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(wait))
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	var c net.Conn
	if err := podnet.InNetns(from.ns, func() error {
		var err error
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from.podIP, 0)), Timeout: 10 * time.Second}
		c, err = d.Dial("tcp", l.Addr().String())
		return err
	}); err != nil {
		t.Fatalf("connecting %s → %s: %v", from.podIP, l.Addr(), err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(wait))
	if _, err := io.CopyN(c, zeros{}, size); err != nil {
		t.Fatalf("sending: %v", err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	select {
	case n := <-got:
		return n
	case <-time.After(wait):
		t.Fatal("the receiver did not finish")
		return 0
	}
}

// TestWireGuardTrafficAfterSync: two clusters, one agent each, each agent's
// WireGuard device in its own node namespace; the namespaces are joined by a
// veth underlay carrying the node IPs of the state, and each holds a pod
// address of its node's pod CIDR. The peers come only from the mesh sync
// (published keys, node IPs, pod CIDRs). Then a TCP transfer between the pod
// addresses succeeds, the devices' counters grow, and the underlay carries
// only WireGuard UDP: no TCP, no pod address. When the mesh stops, no device,
// route or UAPI socket is left.
func TestWireGuardTrafficAfterSync(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	nodes, specs := newTrNodes(t, dir)
	east, west := nodes["east"], nodes["west"]
	joinUnderlay(t, east, west)

	start := time.Now()
	keysDirs, devices := map[string]string{}, map[string]wireguard.Config{}
	for name, n := range nodes {
		keysDirs[name] = n.keysDir
		devices[name] = wireguard.Config{DeviceName: n.device, NetNS: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(n.ns)),
			PrivateKeyFile: filepath.Join(dir, n.name, "wireguard.key")}
	}
	_, agents, closeMesh := startWireGuardMesh(t, specs, keysDirs, devices)
	for name, n := range nodes {
		n.wg = agents[name]
	}

	// Through sync: each device has the other's node-1 as peer (node-2 has
	// no published key and is rejected) and a route to its pod CIDR.
	testenv.WaitFor(t, wait, "both devices configured with the other cluster's node through sync", func() bool {
		return east.hasRemote(west) && west.hasRemote(east)
	})
	t.Logf("peers configured through sync %s after start", time.Since(start).Round(time.Millisecond))
	checkEncryptedTransfer(t, east, west)

	// The mesh stops: the agents close their devices.
	if err := closeMesh(); err != nil {
		t.Errorf("close: %v", err)
	}
	for _, n := range nodes {
		if _, err := n.nl.LinkByName(n.device); err == nil {
			t.Errorf("device %s left behind", n.device)
		}
		if _, err := os.Stat(filepath.Join("/var/run/wireguard", n.device+".sock")); err == nil {
			t.Errorf("UAPI socket of %s left behind", n.device)
		}
		routes, err := n.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: wireguard.RouteProtocol},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if err != nil || len(routes) != 0 {
			t.Errorf("routes left in %s's namespace: %v %v", n.name, routes, err)
		}
	}
}

// newTrNodes makes east's and west's node-1, each in a namespace of its
// own, and their clusters' specs.
func newTrNodes(t *testing.T, dir string) (map[string]*trNode, []ClusterSpec) {
	t.Helper()
	nodes := map[string]*trNode{}
	var specs []ClusterSpec
	for i, name := range []string{"east", "west"} {
		id := i + 1
		st := SampleState(id)
		n := &trNode{name: name, device: "cmwgtr-" + name, veth: "ul-" + name, id: id,
			nodeIP: st.Nodes[0].IPs[0], podCIDR: st.Nodes[0].PodCIDRs[0],
			podIP: st.Nodes[0].PodCIDRs[0].Addr().Next(), keysDir: filepath.Join(dir, name, "node-keys")}
		newNodeNS(t, n)
		nodes[name] = n
		specs = append(specs, ClusterSpec{Name: name, ID: uint32(id), State: st})
	}
	return nodes, specs
}

// joinUnderlay joins east's and west's namespaces by the underlay veth:
// 192.168.1.1 and 192.168.2.1 on one link, 192.168.0.0/16 on-link on both
// sides.
func joinUnderlay(t *testing.T, east, west *trNode) {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: east.veth, MTU: 1500},
		PeerName: west.veth, PeerNamespace: netlink.NsFd(west.ns)}
	if err := east.nl.LinkAdd(veth); err != nil {
		t.Fatalf("creating the underlay veth: %v", err)
	}
	for _, n := range []*trNode{east, west} {
		l, err := n.nl.LinkByName(n.veth)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: n.nodeIP.AsSlice(), Mask: net.CIDRMask(16, 32)}}); err != nil {
			t.Fatal(err)
		}
		if err := n.nl.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
}

// hasRemote: n's device has remote's node-1 as its one peer, of remote's
// cluster, and a route to remote's pod CIDR.
func (n *trNode) hasRemote(remote *trNode) bool {
	d := n.wg.Device()
	if d == nil {
		return false
	}
	if st := d.Status(); st.Peers != 1 || len(st.Clusters) != 1 || st.Clusters[0].Cluster != remote.name {
		return false
	}
	routes, err := n.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: wireguard.RouteProtocol},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return false
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == remote.podCIDR.String() {
			return true
		}
	}
	return false
}

// checkEncryptedTransfer sends 4 MiB over TCP from east's pod address to
// west's: all of it arrives, the devices' counters grow both ways, and the
// underlay carries only WireGuard UDP (no TCP, no pod address).
func checkEncryptedTransfer(t *testing.T, east, west *trNode) {
	t.Helper()
	eTx0, eRx0, eWTx0, eWRx0 := east.wgCounters(t)
	wTx0, wRx0, wWTx0, wWRx0 := west.wgCounters(t)
	capt := startUnderlayCapture(t, west, east.podCIDR, west.podCIDR)
	const size = 4 << 20
	got := podTransfer(t, east, west, size)
	// The device counters are read after the capture has seen the frames.
	capt.finish()
	if got != size {
		t.Fatalf("received %d bytes of %d", got, size)
	}
	t.Logf("%d bytes %s → %s; underlay: %s", size, east.podIP, west.podIP, capt)
	if capt.tcp != 0 || capt.podAddr != 0 || capt.oth != 0 {
		t.Errorf("the underlay carried more than WireGuard UDP: %s", capt)
	}
	if capt.wgBytes < size/2 {
		t.Errorf("the underlay carried %d bytes of WireGuard UDP for a %d-byte transfer", capt.wgBytes, size)
	}
	eTx, eRx, eWTx, eWRx := east.wgCounters(t)
	wTx, wRx, wWTx, wWRx := west.wgCounters(t)
	if eTx-eTx0 < size || wRx-wRx0 < size || eWTx-eWTx0 < size || wWRx-wWRx0 < size {
		t.Errorf("sent %d bytes; east's device sent %d (wire %d), west's received %d (wire %d)", size, eTx-eTx0, eWTx-eWTx0, wRx-wRx0, wWRx-wWRx0)
	}
	if eRx == eRx0 || wTx == wTx0 || eWRx == eWRx0 || wWTx == wWTx0 {
		t.Errorf("no ACKs through the devices: east received %d (wire %d), west sent %d (wire %d)", eRx-eRx0, eWRx-eWRx0, wTx-wTx0, wWTx-wWTx0)
	}
}
