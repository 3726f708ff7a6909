package l7proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// The redirect's test environment: a node network namespace with a client
// and a server pod (internal/podnet), the real policy programs on their
// veths with the mesh's ipcache naming both, servers in the server pod,
// and a Proxy in the node's namespace whose "fwd" engine records what it
// was told and forwards to the original destination (upstream). Everything
// is removed in t.Cleanup.

const (
	clientID = 1001
	serverID = 1002
	// Server ports: L7-redirected, and left in the fast path.
	portL7    = 8080
	portPlain = 8081
	portDNS   = 5353
	parserFwd = "fwd"
)

// Addresses of the node, the client and the server, per family.
var (
	addrs4 = [3]string{"10.213.0.254", "10.213.0.1", "10.213.0.2"}
	addrs6 = [3]string{"fd00:213::fe", "fd00:213::1", "fd00:213::2"}
)

type env struct {
	t      testing.TB
	node   *podnet.Node
	client *podnet.Pod
	server *podnet.Pod
	mesh   *datapath.Maps
	progs  *tcpolicy.Programs
	proxy  *Proxy
	fwd    *fwdHandler

	mu      sync.Mutex
	flowsRd []flows.Flow // guarded by mu
}

type idMap map[netip.Addr]uint32

func (m idMap) IdentityOf(a netip.Addr) uint32 {
	if id, ok := m[a]; ok {
		return id
	}
	return 2
}

func newEnv(t testing.TB) *env { return newEnvFamily(t, addrs4) }

// newEnvFamily is newEnv with the node, client and server addresses of
// addrs (addrs4 or addrs6).
func newEnvFamily(t testing.TB, addrs [3]string) *env {
	t.Helper()
	testenv.RequireRoot(t)
	e := &env{t: t, fwd: &fwdHandler{}}
	e.fwd.inNetns = func(fn func() error) error { return podnet.InNetns(e.node.NS, fn) }
	var err error
	e.node, err = podnet.NewNode(netip.MustParseAddr(addrs[0]))
	must(t, err)
	t.Cleanup(func() { e.node.Close() })
	e.client, err = e.node.AddPod("client", netip.MustParseAddr(addrs[1]), "l7c")
	must(t, err)
	e.server, err = e.node.AddPod("server", netip.MustParseAddr(addrs[2]), "l7s")
	must(t, err)
	testenv.WaitFor(t, 10*time.Second, "pod veths up", func() bool { return e.node.Up() == "" })
	// The kernel does not always add an IPv6 peer's route when the
	// address was added before its link was up: the node's routes to the
	// pods, made sure of.
	for _, pod := range []*podnet.Pod{e.client, e.server} {
		must(t, e.node.NL.RouteReplace(&netlink.Route{LinkIndex: pod.Ifindex, Dst: podnet.Host(pod.IP)}))
	}

	e.openDatapath()
	ids := idMap{e.client.IP: clientID, e.server.IP: serverID}
	for a, id := range ids {
		must(t, e.mesh.UpsertIPCache(netip.PrefixFrom(a, a.BitLen()), datapath.IPCacheEntry{Identity: id}))
	}
	e.serveTCP(portL7)
	e.serveTCP(portPlain)
	e.serveUDP(portDNS)
	// IPv6: the pods' first packets may go while neighbour discovery
	// settles.
	e.waitReachable()
	e.proxy, err = New(Config{
		Handlers:   map[string]Handler{parserFwd: e.fwd},
		Identities: ids,
		InNetns:    func(fn func() error) error { return podnet.InNetns(e.node.NS, fn) },
		StopGrace:  time.Second,
	})
	must(t, err)
	t.Cleanup(func() {
		if err := e.proxy.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return e
}

// openDatapath opens the mesh maps and the policy programs in a pin
// directory of the test's and reads their flow events.
func (e *env) openDatapath() {
	t := e.t
	b := make([]byte, 6)
	rand.Read(b)
	dir := filepath.Join("/sys/fs/bpf", "cm-test-l7-"+hex.EncodeToString(b))
	var err error
	e.mesh, err = datapath.OpenMaps(datapath.Config{PinDir: dir, MaxIPCache: 1 << 10, MaxServiceSlots: 1 << 10, MaxBackends: 1 << 10})
	must(t, err)
	t.Cleanup(func() {
		e.mesh.Close()
		for _, rm := range []func(string) error{tcpolicy.RemovePins, datapath.RemovePins} {
			if err := rm(dir); err != nil {
				t.Errorf("remove pins: %v", err)
			}
		}
		os.Remove(dir)
	})
	e.progs, err = tcpolicy.Open(e.mesh, tcpolicy.Config{MaxPolicy: 1 << 10, MaxPolicyCT: 1 << 10, FlowRingBytes: 1 << 16})
	must(t, err)
	t.Cleanup(func() { e.progs.Close() })
	must(t, e.progs.SetFlowConfig(flows.Config{ClusterID: 1, TraceNew: true, SampleRate: 1}))
	fr, err := e.progs.OpenFlows()
	must(t, err)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			f, err := fr.Read(context.Background())
			if err != nil {
				return
			}
			e.mu.Lock()
			e.flowsRd = append(e.flowsRd, f)
			e.mu.Unlock()
		}
	})
	t.Cleanup(func() { fr.Close(); wg.Wait() })
}

// attach puts the programs on both pods' veths: the client enforcing
// egress, the server ingress, as asked.
func (e *env) attach(clientEgress, serverIngress bool) {
	e.t.Helper()
	err := podnet.InNetns(e.node.NS, func() error {
		return errors.Join(
			e.progs.AttachByName(e.client.HostVeth, clientID, false, clientEgress),
			e.progs.AttachByName(e.server.HostVeth, serverID, serverIngress, false))
	})
	must(e.t, err)
}

// policy allows the client to the server on the three ports, in
// direction dir (the client's egress or the server's ingress), the L7 and
// DNS ports through proxy (0: none).
func (e *env) policy(dir datapath.Direction, proxyTCP, proxyUDP uint16) {
	e.t.Helper()
	ep, peer := uint32(clientID), uint32(serverID)
	if dir == datapath.Ingress {
		ep, peer = serverID, clientID
	}
	key := func(proto datapath.Protocol, port, proxy uint16) tcpolicy.Key {
		return tcpolicy.Key{Endpoint: ep, Peer: peer, Direction: dir, Protocol: proto, Port: port, ProxyPort: proxy}
	}
	must(e.t, e.progs.SyncPolicy([]tcpolicy.Key{
		key(datapath.TCP, portL7, proxyTCP), key(datapath.TCP, portPlain, 0), key(datapath.UDP, portDNS, proxyUDP)}))
}

// serveTCP answers every connection to the server on port with
// "server <port> saw <client address>", then echoes.
func (e *env) serveTCP(port uint16) {
	t := e.t
	var ln net.Listener
	must(t, podnet.InNetns(e.server.NS, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(e.server.IP, port).String())
		return err
	}))
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				from := addrPortOf(c.RemoteAddr())
				fmt.Fprintf(c, "server %d saw %s\n", port, from.Addr())
				copyNoSplice(c, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// serveUDP answers each datagram to the server on port with "answer to
// <payload> for <client address>".
func (e *env) serveUDP(port uint16) {
	t := e.t
	var pc net.PacketConn
	must(t, podnet.InNetns(e.server.NS, func() (err error) {
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(e.server.IP, port).String())
		return err
	}))
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			ap := from.(*net.UDPAddr).AddrPort()
			pc.WriteTo(fmt.Appendf(nil, "answer to %s for %s", buf[:n], ap.Addr()), from)
		}
	})
	t.Cleanup(func() { pc.Close(); wg.Wait() })
}

// dialTCP connects from the client to the server's port and returns the
// server's first line (or the error).
func (e *env) dialTCP(port uint16, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var c net.Conn
	err := podnet.InNetns(e.client.NS, func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(e.server.IP, port).String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	line, err := readLine(c)
	if err != nil {
		return "", err
	}
	// The connection carries data both ways after the first line.
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return "", err
	}
	echo, err := readLine(c)
	if err != nil {
		return "", fmt.Errorf("echo: %w", err)
	}
	if echo != "ping" {
		return "", fmt.Errorf("echo %q, want ping", echo)
	}
	return line, nil
}

// queryUDP sends q from the client to the server's port on a connected
// socket (which takes replies from that address only) and returns the
// answer.
func (e *env) queryUDP(port uint16, q string, timeout time.Duration) (string, error) {
	var c net.Conn
	err := podnet.InNetns(e.client.NS, func() (err error) {
		c, err = net.Dial("udp", netip.AddrPortFrom(e.server.IP, port).String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(q)); err != nil {
		return "", err
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

func readLine(c net.Conn) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			return string(b), err
		}
		if one[0] == '\n' {
			return string(b), nil
		}
		b = append(b, one[0])
	}
}

func (e *env) flows(match func(flows.Flow) bool) []flows.Flow {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []flows.Flow
	for _, f := range e.flowsRd {
		if match(f) {
			out = append(out, f)
		}
	}
	return out
}

// fwdHandler is the tests' engine: it records each connection's and
// datagram's metadata and forwards it to the original destination.
type fwdHandler struct {
	mu   sync.Mutex
	mds  []Metadata // guarded by mu
	errs []error    // guarded by mu: of the upstream
	// upstreamPort, when set, is the source port of the next UDP upstream
	// (instead of the kernel's choice), dialed in the node's namespace
	// (inNetns). Guarded by mu.
	upstreamPort uint16
	inNetns      func(func() error) error
}

func (h *fwdHandler) fail(err error) {
	h.mu.Lock()
	h.errs = append(h.errs, err)
	h.mu.Unlock()
}

func (h *fwdHandler) errors() []error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]error(nil), h.errs...)
}

func (h *fwdHandler) seen() []Metadata {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Metadata(nil), h.mds...)
}

func (h *fwdHandler) record(md Metadata) {
	h.mu.Lock()
	h.mds = append(h.mds, md)
	h.mu.Unlock()
}

func (h *fwdHandler) ServeConn(ctx context.Context, conn net.Conn, md Metadata) {
	h.record(md)
	up, err := md.DialUpstream(ctx)
	if err != nil {
		h.fail(err)
		return
	}
	defer up.Close()
	// As an engine must: return soon after ctx is done (the proxy closes
	// conn only after its grace; up is the handler's to close).
	defer context.AfterFunc(ctx, func() { up.Close() })()
	var wg sync.WaitGroup
	wg.Go(func() { copyNoSplice(up, conn); up.(*net.TCPConn).CloseWrite() })
	copyNoSplice(conn, up)
	conn.Close()
	wg.Wait()
}

func (h *fwdHandler) ServeDatagram(ctx context.Context, d Datagram) {
	h.record(d.Meta)
	h.mu.Lock()
	port := h.upstreamPort
	h.upstreamPort = 0
	h.mu.Unlock()
	md := d.Meta
	if port != 0 {
		md = md.WithUpstream(func(ctx context.Context, md Metadata) (net.Conn, error) {
			return dialFrom(ctx, md, port, h.inNetns)
		})
	}
	up, err := md.DialUpstream(ctx)
	if err != nil {
		h.fail(err)
		return
	}
	defer up.Close()
	up.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := up.Write(d.Payload); err != nil {
		return
	}
	buf := make([]byte, 1500)
	n, err := up.Read(buf)
	if err != nil {
		h.fail(err)
		return
	}
	d.Reply(append([]byte("via proxy: "), buf[:n]...))
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// copyNoSplice is io.Copy without the TCP splice path, whose pipes the
// runtime caches (and the leak check would report).
func copyNoSplice(dst io.Writer, src io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{dst}, struct{ io.Reader }{src})
}

// waitReachable waits until the client reaches the server's plain port;
// it fails the test with the namespaces' routes and neighbours if it does
// not within 20 s.
func (e *env) waitReachable() {
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		var c net.Conn
		if c, err = e.connectClient(portPlain); err == nil {
			c.Close()
			return
		}
	}
	for _, ns := range []netns.NsHandle{e.node.NS, e.client.NS, e.server.NS} {
		podnet.InNetns(ns, func() error {
			out, _ := exec.Command("sh", "-c", "ip addr; ip -6 route; ip -6 neigh; ip route").CombinedOutput()
			e.t.Logf("%s", out)
			return nil
		})
	}
	e.t.Fatalf("the server is not reachable: %v", err)
}

// dialFrom is the proxy's UDP upstream dial from a chosen source port.
func dialFrom(ctx context.Context, md Metadata, port uint16, inNetns func(func() error) error) (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.AddrPortFrom(md.OrigSrc.Addr(), port)),
		Control: sockopts(tcpolicy.MarkFromEgressProxy, false)}
	var c net.Conn
	err := inNetns(func() (err error) {
		c, err = d.DialContext(ctx, udpNet(md.OrigSrc.Addr()), md.OrigDst.String())
		return err
	})
	return c, err
}
