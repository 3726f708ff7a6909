package tcpolicy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/datapath/internal/dptest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// The policy programs' test environment: a "node" network namespace that
// routes between endpoint namespaces, each joined to it by a veth pair the
// way a CNI plugin does it, with the policy programs on the host side:
//
//	node ns (cmp-<id>-node)                      endpoint N ns (cmp-<id>-eN)
//	  lxcN  169.254.1.1/32  fe80::1/64  ───────── eth0 10.210.0.N/32  fd00:210::N/128
//	  route 10.210.0.N/32, fd00:210::N/128 dev lxcN     default via 169.254.1.1, fe80::1
//
// Servers and clients run in this process, their sockets made in an
// endpoint's namespace (a locked thread switched with setns). A goroutine
// reads every flow event into the environment. Everything is removed in
// t.Cleanup.

type polEnv struct {
	t    *testing.T
	id   string
	node string
	mesh *datapath.Maps
	maps *Programs
	eps  map[int]*polEndpoint

	mu    sync.Mutex
	flows []flows.Flow // guarded by mu
}

type polEndpoint struct {
	n       int
	ns      string
	host    string // host-side interface in the node namespace
	ifindex int
	v4, v6  netip.Addr
}

func newPolEnv(t *testing.T, cfg Config, endpoints ...int) *polEnv {
	t.Helper()
	testenv.RequireRoot(t)
	e := &polEnv{t: t, id: dptest.RandomID(t), eps: map[int]*polEndpoint{}}
	e.mesh, e.maps = openTest(t, cfg)
	dptest.NoErr(t, e.maps.SetFlowConfig(flows.Config{ClusterID: 1}))
	e.node = "cmp-" + e.id + "-node"
	dptest.NewNetns(t, e.node)
	for _, kv := range []string{"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"} {
		dptest.Run(t, "ip", "netns", "exec", e.node, "sysctl", "-qw", kv)
	}
	for _, n := range endpoints {
		ep := &polEndpoint{
			n:    n,
			ns:   fmt.Sprintf("cmp-%s-e%d", e.id, n),
			host: fmt.Sprintf("lxc%d", n),
			v4:   netip.AddrFrom4([4]byte{10, 210, 0, byte(n)}),
			v6:   netip.MustParseAddr(fmt.Sprintf("fd00:210::%d", n)),
		}
		dptest.NewNetns(t, ep.ns)
		dptest.Run(t, "ip", "-n", e.node, "link", "add", ep.host, "type", "veth", "peer", "name", "eth0", "netns", ep.ns)
		dptest.Run(t, "ip", "netns", "exec", ep.ns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0")
		dptest.Run(t, "ip", "-n", e.node, "addr", "add", "169.254.1.1/32", "dev", ep.host)
		dptest.Run(t, "ip", "-n", e.node, "addr", "add", "fe80::1/64", "dev", ep.host, "nodad")
		dptest.Run(t, "ip", "-n", e.node, "link", "set", ep.host, "up")
		dptest.Run(t, "ip", "-n", ep.ns, "addr", "add", ep.v4.String()+"/32", "dev", "eth0")
		dptest.Run(t, "ip", "-n", ep.ns, "addr", "add", ep.v6.String()+"/128", "dev", "eth0", "nodad")
		dptest.Run(t, "ip", "-n", ep.ns, "link", "set", "eth0", "up")
		dptest.Run(t, "ip", "-n", ep.ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
		dptest.Run(t, "ip", "-n", ep.ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
		dptest.Run(t, "ip", "-n", ep.ns, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
		dptest.Run(t, "ip", "-n", e.node, "route", "add", ep.v4.String()+"/32", "dev", ep.host)
		dptest.Run(t, "ip", "-n", e.node, "-6", "route", "add", ep.v6.String()+"/128", "dev", ep.host)
		testenv.WaitFor(t, 10*time.Second, ep.host+" up", func() bool {
			out, err := exec.Command("ip", "-n", e.node, "-o", "link", "show", "dev", ep.host).Output()
			return err == nil && bytes.Contains(out, []byte("LOWER_UP")) && bytes.Contains(out, []byte("state UP"))
		})
		err := dptest.InNetns(e.node, func() error {
			ifi, err := net.InterfaceByName(ep.host)
			if err == nil {
				ep.ifindex = ifi.Index
			}
			return err
		})
		dptest.NoErr(t, err)
		e.eps[n] = ep
	}

	fr, err := e.maps.OpenFlows()
	dptest.NoErr(t, err)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			f, err := fr.Read(context.Background())
			if err != nil {
				return // closed
			}
			e.mu.Lock()
			e.flows = append(e.flows, f)
			e.mu.Unlock()
		}
	})
	t.Cleanup(func() { fr.Close(); wg.Wait() })
	return e
}

// use makes the helpers report to t (a subtest) until the returned
// function restores the previous test.
func (e *polEnv) use(t *testing.T) (restore func()) {
	old := e.t
	e.t = t
	return func() { e.t = old }
}

// attach attaches the policy programs to endpoint n's host interface.
func (e *polEnv) attach(n int, identity uint32, ingress, egress bool) {
	e.t.Helper()
	err := dptest.InNetns(e.node, func() error { return e.maps.AttachByName(e.eps[n].host, identity, ingress, egress) })
	if err != nil {
		e.t.Fatalf("Attach(lxc%d): %v", n, err)
	}
}

func (e *polEnv) detach(n int) {
	e.t.Helper()
	dptest.NoErr(e.t, dptest.InNetns(e.node, func() error { return e.maps.Detach(e.eps[n].ifindex) }))
}

// matching returns the flows for which match holds.
func (e *polEnv) matching(match func(flows.Flow) bool) []flows.Flow {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []flows.Flow
	for _, f := range e.flows {
		if match(f) {
			out = append(out, f)
		}
	}
	return out
}

func (e *polEnv) drops() []flows.Flow {
	return e.matching(func(f flows.Flow) bool { return f.Verdict == flows.VerdictDropped })
}

// waitFlows waits until n flows match.
func (e *polEnv) waitFlows(what string, n int, match func(flows.Flow) bool) []flows.Flow {
	e.t.Helper()
	testenv.WaitFor(e.t, 10*time.Second, what, func() bool { return len(e.matching(match)) >= n })
	return e.matching(match)
}

// dialTCP connects from endpoint from to dst with source port sport (0:
// any) and returns what the server said.
func (e *polEnv) dialTCP(ctx context.Context, from int, dst netip.AddrPort, sport int) (string, error) {
	var conn net.Conn
	src := e.eps[from].v4
	if dst.Addr().Is6() {
		src = e.eps[from].v6
	}
	err := dptest.InNetns(e.eps[from].ns, func() (err error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice(), Port: sport}}
		conn, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(conn)
	return string(bytes.TrimSpace(b)), err
}

// wantTCP checks that from reaches dst and hears want.
func (e *polEnv) wantTCP(from int, dst netip.AddrPort, want string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := e.dialTCP(ctx, from, dst, 0)
	if err != nil || got != want {
		e.t.Fatalf("e%d → %s: %q, %v; want %q", from, dst, got, err, want)
	}
}

// wantTCPDropped connects from endpoint from to dst from source port sport,
// waits for the drop of its SYN, then gives up the connect, and returns the
// drop events of that port.
func (e *polEnv) wantTCPDropped(from int, dst netip.AddrPort, sport uint16) []flows.Flow {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := e.dialTCP(ctx, from, dst, int(sport))
		done <- err
	}()
	if sport == 0 {
		e.t.Fatal("wantTCPDropped needs a source port")
	}
	match := func(f flows.Flow) bool {
		return f.Verdict == flows.VerdictDropped && f.Src.Port() == sport && f.Dst == dst
	}
	select {
	case err := <-done:
		e.t.Fatalf("e%d → %s: connected (%v), want dropped", from, dst, err)
	case <-e.waitDone(match):
	}
	cancel()
	if len(e.matching(match)) == 0 {
		e.t.Fatalf("e%d:%d → %s: no drop event", from, sport, dst)
	}
	if err := <-done; err == nil {
		e.t.Fatalf("e%d → %s: connected, want dropped", from, dst)
	}
	return e.matching(match)
}

// waitDone is closed when a flow matches (or after 10 s).
func (e *polEnv) waitDone(match func(flows.Flow) bool) <-chan struct{} {
	c := make(chan struct{})
	go func() {
		defer close(c)
		deadline := time.Now().Add(10 * time.Second)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for len(e.matching(match)) == 0 && time.Now().Before(deadline) {
			<-tick.C
		}
	}()
	return c
}

// udpSocket opens a UDP socket in endpoint from on source port sport.
func (e *polEnv) udpSocket(from int, v6 bool, sport int) *net.UDPConn {
	e.t.Helper()
	src := e.eps[from].v4
	if v6 {
		src = e.eps[from].v6
	}
	var c *net.UDPConn
	err := dptest.InNetns(e.eps[from].ns, func() (err error) {
		c, err = net.ListenUDP("udp", &net.UDPAddr{IP: src.AsSlice(), Port: sport})
		return err
	})
	dptest.NoErr(e.t, err)
	e.t.Cleanup(func() { c.Close() })
	return c
}

// wantUDP sends one datagram from endpoint from to dst and wants the
// server's name back.
func (e *polEnv) wantUDP(from int, dst netip.AddrPort, want string) {
	e.t.Helper()
	c := e.udpSocket(from, dst.Addr().Is6(), 0)
	defer c.Close()
	buf := make([]byte, 64)
	// A datagram may meet an empty neighbour cache: retry a few times.
	for try := 0; ; try++ {
		_, err := c.WriteToUDPAddrPort([]byte("ping"), dst)
		dptest.NoErr(e.t, err)
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err == nil {
			if got := string(buf[:n]); got != want {
				e.t.Fatalf("e%d → %s/udp: %q, want %q", from, dst, got, want)
			}
			return
		}
		if try == 4 {
			e.t.Fatalf("e%d → %s/udp: %v", from, dst, err)
		}
	}
}

// wantUDPDropped sends n datagrams from source port sport and waits for n
// drop events; no reply may come.
func (e *polEnv) wantUDPDropped(from int, dst netip.AddrPort, sport uint16, n int) []flows.Flow {
	e.t.Helper()
	c := e.udpSocket(from, dst.Addr().Is6(), int(sport))
	for range n {
		_, err := c.WriteToUDPAddrPort([]byte("ping"), dst)
		dptest.NoErr(e.t, err)
	}
	match := func(f flows.Flow) bool {
		return f.Verdict == flows.VerdictDropped && f.Src.Port() == sport && f.Dst == dst
	}
	got := e.waitFlows(fmt.Sprintf("%d drops of e%d:%d → %s/udp", n, from, sport, dst), n, match)
	c.SetReadDeadline(time.Now())
	if _, _, err := c.ReadFromUDPAddrPort(make([]byte, 64)); err == nil {
		e.t.Fatalf("e%d → %s/udp: a reply came through", from, dst)
	}
	return got
}

// wantDrop checks every field of a drop event but its time and ports.
func wantDrop(t testing.TB, f flows.Flow, dir datapath.Direction, proto datapath.Protocol, src, dst uint32, srcCluster, dstCluster uint16, ifindex int) {
	t.Helper()
	if f.Verdict != flows.VerdictDropped || f.DropReason != flows.DropPolicyDenied || f.Direction != dir || f.Protocol != proto ||
		f.SrcIdentity != src || f.DstIdentity != dst || f.SrcCluster != srcCluster || f.DstCluster != dstCluster ||
		f.Ifindex != ifindex || f.Reply || f.Time.IsZero() {
		t.Fatalf("drop event %+v\nwant %s %s identities %#x@%d → %#x@%d on ifindex %d, policy denied",
			f, dir, proto, src, srcCluster, dst, dstCluster, ifindex)
	}
}

const (
	envEP    = 0x10001 // e1, local, cluster 1
	envPeer2 = 0x20002 // e2, cluster 2
	envPeer3 = 0x30003 // e3, cluster 3 (e4: unknown, the world)
)

// traffic is TestPolicyTraffic's environment: four endpoints, e1 with
// the programs enforcing both directions; its cases run in order.
type traffic struct {
	*polEnv
	m                  *Programs
	ep1, ep2, ep3, ep4 *polEndpoint
	allow8080          Key // e2 may reach e1:8080
}

// at is ep's IPv4 address with port.
func (e *traffic) at(ep *polEndpoint, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(ep.v4, port)
}

func TestPolicyTraffic(t *testing.T) {
	cfg := Config{MaxPolicy: 1 << 12, MaxPolicyCT: 1 << 12, FlowRingBytes: 1 << 18}
	e := &traffic{polEnv: newPolEnv(t, cfg, 1, 2, 3, 4)}
	e.m = e.maps
	e.ep1, e.ep2, e.ep3, e.ep4 = e.eps[1], e.eps[2], e.eps[3], e.eps[4]
	ep1, ep2, ep3, ep4 := e.ep1, e.ep2, e.ep3, e.ep4
	dptest.NoErr(t, e.mesh.UpsertIPCache(netip.PrefixFrom(ep1.v4, 32), datapath.IPCacheEntry{Identity: envEP, ClusterID: 1}))
	dptest.NoErr(t, e.mesh.UpsertIPCache(netip.PrefixFrom(ep2.v4, 32), datapath.IPCacheEntry{Identity: envPeer2, ClusterID: 2, TunnelEndpoint: netip.MustParseAddr("192.168.2.1")}))
	dptest.NoErr(t, e.mesh.UpsertIPCache(netip.PrefixFrom(ep2.v6, 128), datapath.IPCacheEntry{Identity: envPeer2, ClusterID: 2}))
	dptest.NoErr(t, e.mesh.UpsertIPCache(netip.PrefixFrom(ep3.v4, 32), datapath.IPCacheEntry{Identity: envPeer3, ClusterID: 3, TunnelEndpoint: netip.MustParseAddr("192.168.3.1")}))

	// [::] listens on IPv4 too.
	dptest.ServeTCP(t, ep1.ns, netip.AddrPortFrom(netip.IPv6Unspecified(), 8080), "e1-8080")
	dptest.ServeTCP(t, ep1.ns, netip.AddrPortFrom(netip.IPv6Unspecified(), 8081), "e1-8081")
	dptest.ServeUDP(t, ep1.ns, netip.AddrPortFrom(netip.IPv4Unspecified(), 5353), "e1-5353")
	for _, ep := range []*polEndpoint{ep2, ep3, ep4} {
		dptest.ServeTCP(t, ep.ns, netip.AddrPortFrom(netip.IPv4Unspecified(), 9090), fmt.Sprintf("e%d-9090", ep.n))
		dptest.ServeUDP(t, ep.ns, netip.AddrPortFrom(netip.IPv4Unspecified(), 9191), fmt.Sprintf("e%d-9191", ep.n))
	}

	// Before any policy program: everything flows.
	e.wantTCP(4, e.at(ep1, 8081), "e1-8081")

	e.allow8080 = Key{Endpoint: envEP, Peer: envPeer2, Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 8080}
	dptest.NoErr(t, e.m.ApplyPolicy([]Change{
		{Key: e.allow8080, Add: true},
		{Key: Key{Endpoint: envEP, Peer: envPeer3, Direction: datapath.Ingress, Protocol: datapath.UDP, Port: 5353}, Add: true},
		{Key: Key{Endpoint: envEP, Peer: envPeer2, Direction: datapath.Egress, Protocol: datapath.TCP, Port: 9090}, Add: true},
		{Key: Key{Endpoint: envEP, Peer: envPeer3, Direction: datapath.Egress}, Add: true},
	}))
	e.attach(1, envEP, true, true)

	for _, c := range []struct {
		name string
		run  func(*traffic, *testing.T)
	}{
		{"ingress-allowed", (*traffic).trafficIngressAllowed},
		{"ingress-denied", (*traffic).trafficIngressDenied},
		{"egress", (*traffic).trafficEgress},
		{"revoke", (*traffic).trafficRevoke},
		{"sampling", (*traffic).trafficSampling},
		{"both-ends", (*traffic).trafficBothEnds},
		{"every-drop-one-event", (*traffic).trafficEveryDropOneEvent},
		{"audit", (*traffic).trafficAudit},
		{"detach", (*traffic).trafficDetach},
	} {
		t.Run(c.name, func(t *testing.T) { c.run(e, t) })
	}
}

func (e *traffic) trafficIngressAllowed(t *testing.T) {
	defer e.use(t)()
	e.wantTCP(2, e.at(e.ep1, 8080), "e1-8080") // replies pass e1's enforced egress
	e.wantTCP(2, netip.AddrPortFrom(e.ep1.v6, 8080), "e1-8080")
	e.wantUDP(3, e.at(e.ep1, 5353), "e1-5353")
}

func (e *traffic) trafficIngressDenied(t *testing.T) {
	defer e.use(t)()
	for _, c := range []struct {
		from     int
		dst      netip.AddrPort
		sport    uint16
		src      uint32
		cluster  uint16
		protocol datapath.Protocol
	}{
		{2, e.at(e.ep1, 8081), 41001, envPeer2, 2, datapath.TCP},                                // another port
		{3, e.at(e.ep1, 8080), 41002, envPeer3, 3, datapath.TCP},                                // another peer
		{4, e.at(e.ep1, 8080), 41003, datapath.IdentityWorld, 0, datapath.TCP},                  // the world
		{2, netip.AddrPortFrom(e.ep1.v6, 8081), 41004, envPeer2, 2, datapath.TCP},               // IPv6
		{4, netip.AddrPortFrom(e.ep1.v6, 8080), 41005, datapath.IdentityWorld, 0, datapath.TCP}, // IPv6 world
	} {
		for _, f := range e.wantTCPDropped(c.from, c.dst, c.sport) {
			wantDrop(t, f, datapath.Ingress, c.protocol, c.src, envEP, c.cluster, 1, e.ep1.ifindex)
		}
	}
	// UDP: each of three datagrams is one drop event, exactly.
	fs := e.wantUDPDropped(2, e.at(e.ep1, 5353), 41010, 3)
	if len(fs) != 3 {
		t.Fatalf("%d drop events for 3 datagrams", len(fs))
	}
	for _, f := range fs {
		wantDrop(t, f, datapath.Ingress, datapath.UDP, envPeer2, envEP, 2, 1, e.ep1.ifindex)
		if f.Src != netip.AddrPortFrom(e.ep2.v4, 41010) || f.Dst != e.at(e.ep1, 5353) {
			t.Fatalf("UDP drop addresses %+v", f)
		}
	}
}

func (e *traffic) trafficEgress(t *testing.T) {
	defer e.use(t)()
	e.wantTCP(1, e.at(e.ep2, 9090), "e2-9090")
	e.wantTCP(1, e.at(e.ep3, 9090), "e3-9090") // any protocol, any port
	e.wantUDP(1, e.at(e.ep3, 9191), "e3-9191")
	for _, f := range e.wantTCPDropped(1, e.at(e.ep4, 9090), 42001) {
		wantDrop(t, f, datapath.Egress, datapath.TCP, envEP, datapath.IdentityWorld, 1, 0, e.ep1.ifindex)
	}
	fs := e.wantUDPDropped(1, e.at(e.ep2, 9191), 42002, 2)
	for _, f := range fs {
		wantDrop(t, f, datapath.Egress, datapath.UDP, envEP, envPeer2, 1, 2, e.ep1.ifindex)
	}
	if len(fs) != 2 {
		t.Fatalf("%d drop events for 2 datagrams", len(fs))
	}
}

func (e *traffic) trafficRevoke(t *testing.T) {
	defer e.use(t)()
	e.wantTCP(2, e.at(e.ep1, 8080), "e1-8080")
	dptest.NoErr(t, e.m.DeletePolicy(e.allow8080))
	for _, f := range e.wantTCPDropped(2, e.at(e.ep1, 8080), 41020) {
		wantDrop(t, f, datapath.Ingress, datapath.TCP, envPeer2, envEP, 2, 1, e.ep1.ifindex)
	}
	dptest.NoErr(t, e.m.UpsertPolicy(e.allow8080))
	e.wantTCP(2, e.at(e.ep1, 8080), "e1-8080")
}

func (e *traffic) trafficSampling(t *testing.T) {
	defer e.use(t)()
	const rate = 5
	dptest.NoErr(t, e.m.SetFlowConfig(flows.Config{SampleRate: rate, ClusterID: 1}))
	before, err := e.m.Counters()
	dptest.NoErr(t, err)
	isSampled := func(f flows.Flow) bool { return f.Sampled }
	already := len(e.matching(isSampled))
	for range 40 {
		e.wantUDP(3, e.at(e.ep1, 5353), "e1-5353")
	}
	dptest.NoErr(t, e.m.SetFlowConfig(flows.Config{ClusterID: 1}))
	after, err := e.m.Counters()
	dptest.NoErr(t, err)
	fwd := after.Forwarded[0] + after.Forwarded[1] - before.Forwarded[0] - before.Forwarded[1]
	// Every CPU reports each rate-th of its own packets: within one
	// per CPU of fwd/rate.
	cpus := uint64(numCPU())
	lo, hi := fwd/rate-min(cpus, fwd/rate), fwd/rate+cpus
	testenv.WaitFor(t, 10*time.Second, "sampled events", func() bool {
		c, err := e.m.Counters()
		return err == nil && uint64(len(e.matching(func(f flows.Flow) bool { return true }))) >= c.Events
	})
	sampled := e.matching(isSampled)[already:]
	if n := uint64(len(sampled)); n < lo || n > hi || fwd < 80 {
		t.Fatalf("%d forwarded packets at 1 in %d: %d sampled events, want %d to %d", fwd, rate, n, lo, hi)
	}
	for _, f := range sampled {
		if f.Verdict != flows.VerdictForwarded || f.SampleRate != rate || f.Ifindex != e.ep1.ifindex {
			t.Fatalf("sampled event %+v", f)
		}
		want := flows.Flow{SrcIdentity: envPeer3, SrcCluster: 3, DstIdentity: envEP, DstCluster: 1}
		if f.Direction == datapath.Egress {
			want = flows.Flow{SrcIdentity: envEP, SrcCluster: 1, DstIdentity: envPeer3, DstCluster: 3}
			if !f.Reply {
				t.Fatalf("egress event not a reply: %+v", f)
			}
		}
		if f.SrcIdentity != want.SrcIdentity || f.DstIdentity != want.DstIdentity || f.SrcCluster != want.SrcCluster || f.DstCluster != want.DstCluster {
			t.Fatalf("sampled event %+v, want identities %+v", f, want)
		}
	}
}

func (e *traffic) trafficBothEnds(t *testing.T) {
	defer e.use(t)()
	// e2 enforces its egress too: it may reach e1:8080 only.
	dptest.NoErr(t, e.m.UpsertPolicy(Key{Endpoint: envPeer2, Peer: envEP, Direction: datapath.Egress, Protocol: datapath.TCP, Port: 8080}))
	e.attach(2, envPeer2, false, true)
	e.wantTCP(2, e.at(e.ep1, 8080), "e1-8080")
	for _, f := range e.wantTCPDropped(2, e.at(e.ep1, 8081), 41030) {
		// Dropped at e2's egress, before e1 sees it.
		wantDrop(t, f, datapath.Egress, datapath.TCP, envPeer2, envEP, 1, 1, e.eps[2].ifindex)
	}
	e.detach(2)
}

func (e *traffic) trafficEveryDropOneEvent(t *testing.T) {
	defer e.use(t)()
	// Every drop counted by the programs is one event read, none lost.
	testenv.WaitFor(t, 10*time.Second, "every drop read", func() bool {
		c, err := e.m.Counters()
		return err == nil && uint64(len(e.drops())) == c.Dropped()
	})
	c, err := e.m.Counters()
	dptest.NoErr(t, err)
	if c.EventsLost != 0 || c.DroppedInvalid != [2]uint64{} {
		t.Fatalf("counters %+v", c)
	}
	t.Logf("counters %+v, %d drop events", c, len(e.drops()))
}

// trafficAudit: e1 in audit mode (AttachEndpoint) accepts a connection its
// policy denies, reported AUDIT in a policy verdict with the SYN's flags;
// out of audit mode it is dropped again.
func (e *traffic) trafficAudit(t *testing.T) {
	defer e.use(t)()
	dptest.NoErr(t, e.m.SetFlowConfig(flows.Config{ClusterID: 1, PolicyVerdicts: true}))
	defer func() { dptest.NoErr(t, e.m.SetFlowConfig(flows.Config{ClusterID: 1})) }()
	audited := Endpoint{Identity: envEP, EnforceIngress: true, EnforceEgress: true, Audit: true}
	dptest.NoErr(t, dptest.InNetns(e.node, func() error { return e.m.AttachEndpoint(e.ep1.ifindex, audited) }))
	if atts, err := e.m.Attachments(); err != nil || atts[e.ep1.ifindex] != audited {
		t.Fatalf("Attachments() = %v, %v; want e1 audited", atts, err)
	}
	e.wantTCP(2, e.at(e.ep1, 8081), "e1-8081")
	verdicts := e.waitFlows("the audited connection's policy verdict", 1, func(f flows.Flow) bool {
		return f.Kind == flows.KindPolicyVerdict && f.Dst == e.at(e.ep1, 8081)
	})
	f := verdicts[0]
	if f.Verdict != flows.VerdictAudit || f.Direction != datapath.Ingress || f.SrcIdentity != envPeer2 ||
		f.MatchType != flows.MatchNone || f.TCPFlags != flows.TCPFlagSYN || !f.New {
		t.Fatalf("audited policy verdict %+v", f)
	}
	c, err := e.m.Counters()
	dptest.NoErr(t, err)
	if c.Audited[datapath.Ingress] == 0 {
		t.Fatalf("counters %+v: no audited ingress decision", c)
	}

	e.attach(1, envEP, true, true)
	for _, f := range e.wantTCPDropped(2, e.at(e.ep1, 8081), 41040) {
		if f.Kind == flows.KindDrop {
			wantDrop(t, f, datapath.Ingress, datapath.TCP, envPeer2, envEP, 2, 1, e.ep1.ifindex)
		}
	}
}

func (e *traffic) trafficDetach(t *testing.T) {
	defer e.use(t)()
	e.detach(1)
	e.wantTCP(4, e.at(e.ep1, 8081), "e1-8081")
	atts, err := e.m.Attachments()
	dptest.NoErr(t, err)
	if len(atts) != 0 {
		t.Fatalf("attachments after detach: %v", atts)
	}
}

// numCPU is the number of possible CPUs (the per-CPU maps' width).
func numCPU() int {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return 1
	}
	return n
}

// tcxPrograms counts the TCX programs on both hooks of endpoint n's host
// interface.
func (e *polEnv) tcxPrograms(n int) (ingress, egress int) {
	e.t.Helper()
	err := dptest.InNetns(e.node, func() error {
		for _, h := range []struct {
			at  ebpf.AttachType
			dst *int
		}{{ebpf.AttachTCXIngress, &ingress}, {ebpf.AttachTCXEgress, &egress}} {
			r, err := link.QueryPrograms(link.QueryOptions{Target: e.eps[n].ifindex, Attach: h.at})
			if err != nil {
				return err
			}
			*h.dst = len(r.Programs)
		}
		return nil
	})
	dptest.NoErr(e.t, err)
	return ingress, egress
}

// tcFilters lists the tc filters of endpoint n's host interface.
func (e *polEnv) tcFilters(n int, hook string) string {
	e.t.Helper()
	out, err := exec.Command("tc", "-n", e.node, "filter", "show", "dev", e.eps[n].host, hook).CombinedOutput()
	if err != nil && !bytes.Contains(out, []byte("Cannot find")) {
		e.t.Fatalf("tc filter show: %v: %s", err, out)
	}
	return string(out)
}

// attachEnv is TestPolicyAttach's environment: three endpoints, e1
// serving 8080 (allowed from the world) and 8081; its cases run in order.
type attachEnv struct {
	*polEnv
	top   *testing.T
	m     *Programs // the current agent's
	ep1   *polEndpoint
	sport uint16 // the last source port enforced used
}

// at is e1's IPv4 address with port.
func (e *attachEnv) at(port uint16) netip.AddrPort { return netip.AddrPortFrom(e.ep1.v4, port) }

// enforced checks that e1 is enforced with identity: e2 reaches 8080, and
// its connect to 8081 is dropped and reported.
func (e *attachEnv) enforced(t *testing.T, identity uint32) {
	t.Helper()
	e.wantTCP(2, e.at(8080), "e1-8080")
	e.sport++
	for _, f := range e.wantTCPDropped(2, e.at(8081), e.sport) {
		wantDrop(t, f, datapath.Ingress, datapath.TCP, datapath.IdentityWorld, identity, 0, 1, e.ep1.ifindex)
	}
}

func TestPolicyAttach(t *testing.T) {
	cfg := Config{MaxPolicy: 1 << 12, MaxPolicyCT: 1 << 12, FlowRingBytes: 1 << 16}
	e := &attachEnv{polEnv: newPolEnv(t, cfg, 1, 2, 3), top: t, sport: 44000}
	e.m, e.ep1 = e.maps, e.eps[1]
	dptest.ServeTCP(t, e.ep1.ns, netip.AddrPortFrom(netip.IPv4Unspecified(), 8080), "e1-8080")
	dptest.ServeTCP(t, e.ep1.ns, netip.AddrPortFrom(netip.IPv4Unspecified(), 8081), "e1-8081")
	dptest.NoErr(t, e.m.UpsertPolicy(Key{Endpoint: envEP, Peer: datapath.IdentityWorld, Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 8080}))
	for _, c := range []struct {
		name string
		run  func(*attachEnv, *testing.T)
	}{
		{"tcx", (*attachEnv).attachTcx},
		{"restart", (*attachEnv).attachRestart},
		{"identity-change", (*attachEnv).attachIdentityChange},
		{"clsact", (*attachEnv).attachClsact},
		{"gone-interface", (*attachEnv).attachGoneInterface},
		{"remove-pins", (*attachEnv).attachRemovePins},
	} {
		t.Run(c.name, func(t *testing.T) { c.run(e, t) })
	}
}

func (e *attachEnv) attachTcx(t *testing.T) {
	defer e.use(t)()
	e.attach(1, envEP, true, false)
	e.attach(1, envEP, true, false) // idempotent
	if in, eg := e.tcxPrograms(1); in != 1 || eg != 1 {
		t.Fatalf("%d TCX ingress and %d egress programs, want 1 and 1", in, eg)
	}
	for _, h := range policyHooks {
		if _, err := os.Stat(e.m.linkPin(e.ep1.ifindex, h)); err != nil {
			t.Fatalf("pinned link: %v", err)
		}
	}
	e.enforced(t, envEP)
	atts, err := e.m.Attachments()
	dptest.NoErr(t, err)
	if want := (map[int]Endpoint{e.ep1.ifindex: {Identity: envEP, EnforceIngress: true}}); !reflect.DeepEqual(atts, want) {
		t.Fatalf("attachments %v, want %v", atts, want)
	}
}

func (e *attachEnv) attachRestart(t *testing.T) {
	defer e.use(t)()
	// A new agent: its Programs (on the same pins) find the links of
	// the previous one and move them to its own programs.
	dptest.NoErr(t, e.m.Close())
	m2 := openPrograms(e.top, e.mesh, e.m.Config())
	e.enforced(t, envEP) // still enforced in between
	dptest.NoErr(t, dptest.InNetns(e.node, func() error { return m2.Attach(e.ep1.ifindex, envEP, true, false) }))
	if in, eg := e.tcxPrograms(1); in != 1 || eg != 1 {
		t.Fatalf("after restart: %d TCX ingress and %d egress programs, want 1 and 1", in, eg)
	}
	e.enforced(t, envEP)
	e.maps, e.m = m2, m2
}

func (e *attachEnv) attachIdentityChange(t *testing.T) {
	defer e.use(t)()
	const other = envEP + 1
	e.attach(1, other, true, false) // no entry allows anything to it
	for _, f := range e.wantTCPDropped(2, e.at(8080), 43001) {
		wantDrop(t, f, datapath.Ingress, datapath.TCP, datapath.IdentityWorld, other, 0, 1, e.ep1.ifindex)
	}
	e.attach(1, envEP, true, false)
}

func (e *attachEnv) attachClsact(t *testing.T) {
	defer e.use(t)()
	e.detach(1)
	if in, eg := e.tcxPrograms(1); in != 0 || eg != 0 {
		t.Fatalf("after detach: %d TCX ingress and %d egress programs", in, eg)
	}
	e.wantTCP(2, e.at(8081), "e1-8081")
	forceClsact(t, e.m, true)
	e.attach(1, envEP, true, false)
	e.attach(1, envEP, true, false) // replaced, not added
	for _, hook := range []string{"ingress", "egress"} {
		out := e.tcFilters(1, hook)
		if bytes.Count([]byte(out), []byte("cm_policy_"+hook)) != 1 || !bytes.Contains([]byte(out), []byte("direct-action")) {
			t.Fatalf("tc %s filters:\n%s", hook, out)
		}
	}
	if in, eg := e.tcxPrograms(1); in != 0 || eg != 0 {
		t.Fatalf("clsact mode: %d TCX ingress and %d egress programs", in, eg)
	}
	e.enforced(t, envEP)
	// Back to TCX: the filters go.
	forceClsact(t, e.m, false)
	e.attach(1, envEP, true, false)
	if out := e.tcFilters(1, "ingress") + e.tcFilters(1, "egress"); bytes.Contains([]byte(out), []byte("cm_policy_")) {
		t.Fatalf("filters left after moving to TCX:\n%s", out)
	}
	e.enforced(t, envEP)
	forceClsact(t, e.m, true)
	e.detach(1)
	e.attach(1, envEP, true, false)
	e.detach(1)
	if out := e.tcFilters(1, "ingress") + e.tcFilters(1, "egress"); bytes.Contains([]byte(out), []byte("cm_policy_")) {
		t.Fatalf("filters left after detach:\n%s", out)
	}
	e.wantTCP(2, e.at(8081), "e1-8081")
}

func (e *attachEnv) attachGoneInterface(t *testing.T) {
	defer e.use(t)()
	e.attach(2, envPeer2, true, true)
	ifindex := e.eps[2].ifindex
	dptest.Run(t, "ip", "-n", e.node, "link", "del", e.eps[2].host)
	dptest.NoErr(t, e.m.Detach(ifindex))
	for _, h := range policyHooks {
		if _, err := os.Stat(e.m.linkPin(ifindex, h)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("pin of a detached link: %v", err)
		}
	}
	err := dptest.InNetns(e.node, func() error { return e.m.Attach(ifindex, envPeer2, true, true) })
	dptest.ErrIs(t, err, ErrNoInterface)
	dptest.ErrIs(t, e.m.AttachByName("nonexistent0", 5, true, true), ErrNoInterface)
}

func (e *attachEnv) attachRemovePins(t *testing.T) {
	defer e.use(t)()
	e.attach(1, envEP, true, false)
	dptest.NoErr(t, RemovePins(e.m.pinDir))
	if in, eg := e.tcxPrograms(1); in != 0 || eg != 0 {
		t.Fatalf("after RemovePins: %d TCX ingress and %d egress programs", in, eg)
	}
	e.wantTCP(3, e.at(8081), "e1-8081")
}

// TestPolicyEndpointsFull: with --max-policy-endpoint-entries 1, a second
// interface is refused with ErrFull naming that option; once the first is
// detached, the second attaches.
func TestPolicyEndpointsFull(t *testing.T) {
	cfg := Config{MaxPolicy: 1 << 10, MaxPolicyCT: 1 << 10, FlowRingBytes: 1 << 14, MaxPolicyEndpoints: 1}
	e := newPolEnv(t, cfg, 1, 2)
	e.attach(1, envEP, true, true)
	err := dptest.InNetns(e.node, func() error { return e.maps.AttachByName(e.eps[2].host, envPeer2, true, true) })
	dptest.WantFull(t, err, "max-policy-endpoint-entries")
	t.Logf("error: %v", err)
	e.detach(1)
	e.attach(2, envPeer2, true, true)
}
