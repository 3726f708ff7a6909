package l7proxy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// TestRedirect sends a client pod's connections and datagrams to a server
// pod through the real policy programs, with the L7 redirect on the
// client's egress or on the server's ingress: the redirected port lands on
// the proxy, whose engine sees the original destination and both
// identities and forwards upstream, from the client's own address; the
// other port never reaches the proxy; UDP is redirected the same way; with
// the proxy's listener gone the redirected flows are dropped
// (proxy-unavailable, counted, reported) while the plain port still works.
func TestRedirect(t *testing.T) {
	for _, fam := range []struct {
		name  string
		addrs [3]string
	}{{"IPv4", addrs4}, {"IPv6", addrs6}} {
		for _, dir := range []datapath.Direction{datapath.Egress, datapath.Ingress} {
			t.Run(fam.name+"/"+dir.String(), func(t *testing.T) { testRedirect(t, newEnvFamily(t, fam.addrs), dir) })
		}
	}
}

func testRedirect(t *testing.T, e *env, dir datapath.Direction) {
	ep := uint32(clientID)
	if dir == datapath.Ingress {
		ep = serverID
	}
	tcpKey := RedirectKey{EndpointID: ep, Port: portL7, Direction: dir, Parser: parserFwd}
	udpKey := RedirectKey{EndpointID: ep, Port: portDNS, Direction: dir, Parser: parserFwd}
	tcpPort, err := e.proxy.Ensure(tcpKey, "tcp-rules")
	must(t, err)
	udpPort, err := e.proxy.Ensure(udpKey, "udp-rules")
	must(t, err)
	e.attach(dir == datapath.Egress, dir == datapath.Ingress)
	e.policy(dir, tcpPort, udpPort)

	// The L7 port: through the proxy, and the server still sees the client.
	line, err := e.dialTCP(portL7, 10*time.Second)
	if err != nil {
		c, _ := e.progs.Counters()
		for _, f := range e.flows(func(flows.Flow) bool { return true }) {
			t.Logf("flow %s %s %s→%s if %d reply %v flags %v proxy %d reason %s", f.Kind, f.Verdict, f.Src, f.Dst, f.Ifindex, f.Reply, f.TCPFlags, f.ProxyPort, f.DropReason)
		}
		t.Fatalf("through the proxy: %v (the engine saw %+v, upstream errors %v), counters %+v", err, e.fwd.seen(), e.fwd.errors(), c)
	}
	if want := fmt.Sprintf("server %d saw %s", portL7, e.client.IP); line != want {
		t.Fatalf("through the proxy: got %q, want %q", line, want)
	}
	mds := e.fwd.seen()
	if len(mds) != 1 {
		t.Fatalf("the engine saw %d connections, want 1: %+v", len(mds), mds)
	}
	md := mds[0]
	if md.OrigDst.Addr() != e.server.IP || md.OrigDst.Port() != portL7 || md.OrigSrc.Addr() != e.client.IP ||
		md.SrcIdentity != clientID || md.DstIdentity != serverID || md.EndpointID != ep || md.Direction != dir ||
		md.Protocol != datapath.TCP || md.ProxyPort != tcpPort || md.Rules != "tcp-rules" || md.Parser != parserFwd {
		t.Fatalf("metadata %+v: want %s:%d from %s, identities %d → %d, endpoint %d, %s, TCP, port %d, tcp-rules",
			md, e.server.IP, portL7, e.client.IP, clientID, serverID, ep, dir, tcpPort)
	}

	// The plain port stays in the fast path.
	line, err = e.dialTCP(portPlain, 10*time.Second)
	must(t, err)
	if !strings.HasPrefix(line, fmt.Sprintf("server %d saw", portPlain)) {
		t.Fatalf("plain port: got %q", line)
	}
	if n := len(e.fwd.seen()); n != 1 {
		t.Fatalf("the plain port reached the proxy: the engine saw %d flows", n)
	}

	// UDP: the DNS-like port through the proxy, the answer from the
	// server's address (the client's socket is connected to it).
	ans, err := e.queryUDP(portDNS, "q1", 10*time.Second)
	must(t, err)
	if want := fmt.Sprintf("via proxy: answer to q1 for %s", e.client.IP); ans != want {
		t.Fatalf("UDP through the proxy: got %q, want %q", ans, want)
	}
	mds = e.fwd.seen()
	if md := mds[len(mds)-1]; md.Protocol != datapath.UDP || md.OrigDst.Port() != portDNS || md.SrcIdentity != clientID ||
		md.DstIdentity != serverID || md.ProxyPort != udpPort || md.Rules != "udp-rules" {
		t.Fatalf("UDP metadata %+v", md)
	}
	c, err := e.progs.Counters()
	must(t, err)
	if c.Redirected[dir] == 0 || c.Dropped() != 0 {
		t.Fatalf("counters %+v: want packets redirected %s and no drop", c, dir)
	}
	testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("a REDIRECTED flow event with proxy port %d", tcpPort), func() bool {
		return len(e.flows(func(f flows.Flow) bool { return f.Verdict == flows.VerdictRedirected && f.ProxyPort == tcpPort })) > 0
	})

	// Fail closed: the proxy's listeners gone, the L7 port is dropped and
	// counted; the plain port still works.
	e.proxy.Remove(tcpKey)
	e.proxy.Remove(udpKey)
	if line, err := e.dialTCP(portL7, time.Second); err == nil {
		t.Fatalf("with the proxy stopped, the L7 port answered %q", line)
	}
	if ans, err := e.queryUDP(portDNS, "q2", time.Second); err == nil {
		t.Fatalf("with the proxy stopped, the UDP port answered %q", ans)
	}
	testenv.WaitFor(t, 10*time.Second, "proxy-unavailable drops reported", func() bool {
		return len(e.flows(func(f flows.Flow) bool { return f.DropReason == flows.DropProxyUnavailable && f.Dst.Port() == portL7 })) > 0 &&
			len(e.flows(func(f flows.Flow) bool { return f.DropReason == flows.DropProxyUnavailable && f.Dst.Port() == portDNS })) > 0
	})
	c, err = e.progs.Counters()
	must(t, err)
	if c.DroppedProxy[dir] < 2 || c.DroppedPolicy != [2]uint64{} {
		t.Fatalf("counters %+v: want proxy drops %s", c, dir)
	}
	if _, err := e.dialTCP(portPlain, 10*time.Second); err != nil {
		t.Fatalf("plain port with the proxy stopped: %v", err)
	}
	if n := len(e.fwd.seen()); n != 2 {
		t.Fatalf("the engine saw %d flows, want 2", n)
	}
}

// TestRedirectToUnmanagedPeer: the egress proxy's upstream goes to a peer
// without the policy programs (as a pod of another node or a host is):
// its replies reach the client's veth with no conntrack entry there, and
// are sent to the upstream's socket by the hairpin, TCP and UDP.
func TestRedirectToUnmanagedPeer(t *testing.T) {
	e := newEnv(t)
	tcpPort, err := e.proxy.Ensure(RedirectKey{EndpointID: clientID, Port: portL7, Direction: datapath.Egress, Parser: parserFwd}, nil)
	must(t, err)
	udpPort, err := e.proxy.Ensure(RedirectKey{EndpointID: clientID, Port: portDNS, Direction: datapath.Egress, Parser: parserFwd}, nil)
	must(t, err)
	must(t, podnet.InNetns(e.node.NS, func() error { return e.progs.AttachByName(e.client.HostVeth, clientID, false, true) }))
	e.policy(datapath.Egress, tcpPort, udpPort)

	line, err := e.dialTCP(portL7, 10*time.Second)
	must(t, err)
	if want := fmt.Sprintf("server %d saw %s", portL7, e.client.IP); line != want {
		t.Fatalf("through the proxy: got %q, want %q", line, want)
	}
	ans, err := e.queryUDP(portDNS, "q", 10*time.Second)
	must(t, err)
	if want := fmt.Sprintf("via proxy: answer to q for %s", e.client.IP); ans != want {
		t.Fatalf("UDP through the proxy: got %q, want %q", ans, want)
	}
	if n := len(e.fwd.seen()); n != 2 {
		t.Fatalf("the engine saw %d flows, want 2", n)
	}
}

// TestRedirectBothDirections: the client's egress and the server's
// ingress both send the port to a proxy: the egress proxy's upstream is
// redirected to the ingress proxy (as the server's policy says), whose own
// upstream reaches the server (never a proxy again); the server still sees
// the client's address.
func TestRedirectBothDirections(t *testing.T) {
	e := newEnv(t)
	egress, err := e.proxy.Ensure(RedirectKey{EndpointID: clientID, Port: portL7, Direction: datapath.Egress, Parser: parserFwd}, "egress")
	must(t, err)
	ingress, err := e.proxy.Ensure(RedirectKey{EndpointID: serverID, Port: portL7, Direction: datapath.Ingress, Parser: parserFwd}, "ingress")
	must(t, err)
	e.attach(true, true)
	key := func(ep, peer uint32, dir datapath.Direction, port, proxy uint16) tcpolicy.Key {
		return tcpolicy.Key{Endpoint: ep, Peer: peer, Direction: dir, Protocol: datapath.TCP, Port: port, ProxyPort: proxy}
	}
	must(t, e.progs.SyncPolicy([]tcpolicy.Key{
		key(clientID, serverID, datapath.Egress, portL7, egress), key(serverID, clientID, datapath.Ingress, portL7, ingress),
		key(clientID, serverID, datapath.Egress, portPlain, 0), key(serverID, clientID, datapath.Ingress, portPlain, 0)}))

	line, err := e.dialTCP(portL7, 10*time.Second)
	must(t, err)
	if want := fmt.Sprintf("server %d saw %s", portL7, e.client.IP); line != want {
		t.Fatalf("through both proxies: got %q, want %q", line, want)
	}
	mds := e.fwd.seen()
	if len(mds) != 2 || mds[0].Rules != "egress" || mds[1].Rules != "ingress" ||
		mds[1].OrigDst != mds[0].OrigDst || mds[1].OrigSrc.Addr() != e.client.IP || mds[1].SrcIdentity != clientID {
		t.Fatalf("the engine saw %+v: want the egress proxy's connection, then the ingress proxy's", mds)
	}
}

// TestUpstreamJudgedAsClient: the egress proxy's upstream is checked by the
// server's ingress policy as the client (its address, so its identity): a
// server that does not allow the client refuses the proxy too, with a
// policy drop naming the client's identity.
func TestUpstreamJudgedAsClient(t *testing.T) {
	e := newEnv(t)
	port, err := e.proxy.Ensure(RedirectKey{EndpointID: clientID, Port: portL7, Direction: datapath.Egress, Parser: parserFwd}, nil)
	must(t, err)
	e.attach(true, true)
	// The client may reach the server's L7 port (through the proxy); the
	// server allows only the plain port to the client.
	must(t, e.progs.SyncPolicy([]tcpolicy.Key{
		{Endpoint: clientID, Peer: serverID, Direction: datapath.Egress, Protocol: datapath.TCP, Port: portL7, ProxyPort: port},
		{Endpoint: clientID, Peer: serverID, Direction: datapath.Egress, Protocol: datapath.TCP, Port: portPlain},
		{Endpoint: serverID, Peer: clientID, Direction: datapath.Ingress, Protocol: datapath.TCP, Port: portPlain}}))

	if line, err := e.dialTCP(portL7, 2*time.Second); err == nil {
		t.Fatalf("the server's policy let the proxy's upstream in: %q", line)
	}
	testenv.WaitFor(t, 10*time.Second, "the upstream's policy drop", func() bool {
		return len(e.flows(func(f flows.Flow) bool {
			return f.DropReason == flows.DropPolicyDenied && f.Direction == datapath.Ingress && f.Dst.Port() == portL7 &&
				f.SrcIdentity == clientID && f.Src.Addr() == e.client.IP
		})) > 0
	})
	if n := len(e.fwd.seen()); n != 1 {
		t.Fatalf("the engine saw %d connections, want 1 (whose upstream the server refused)", n)
	}
}

// TestUpstreamPortOfAnEarlierFlow: the upstream's source port (the node's
// kernel's choice, blind to the pod's) is one the pod used for an earlier
// proxied query to the same server, whose conntrack entry still lives on
// the pod's veth: the server's answer (a peer without the programs, so it
// comes back through the pod's veth) still reaches the upstream's socket,
// not the pod.
func TestUpstreamPortOfAnEarlierFlow(t *testing.T) {
	e := newEnv(t)
	udpPort, err := e.proxy.Ensure(RedirectKey{EndpointID: clientID, Port: portDNS, Direction: datapath.Egress, Parser: parserFwd}, nil)
	must(t, err)
	must(t, podnet.InNetns(e.node.NS, func() error { return e.progs.AttachByName(e.client.HostVeth, clientID, false, true) }))
	e.policy(datapath.Egress, 0, udpPort)

	_, err = e.queryUDP(portDNS, "q1", 10*time.Second)
	must(t, err)
	first := e.fwd.seen()[0].OrigSrc.Port()
	// The next upstream takes the first query's port.
	e.fwd.mu.Lock()
	e.fwd.upstreamPort = first
	e.fwd.mu.Unlock()
	ans, err := e.queryUDP(portDNS, "q2", 10*time.Second)
	if err != nil {
		t.Fatalf("with the upstream on port %d of an earlier query: %v (upstream errors %v)", first, err, e.fwd.errors())
	}
	if want := fmt.Sprintf("via proxy: answer to q2 for %s", e.client.IP); ans != want {
		t.Fatalf("got %q, want %q", ans, want)
	}
}
