package l7proxy

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/podnet"
)

// The redirect's cost, through real veths and the real programs, against
// the same traffic in the fast path (the plain port) in the same run:
// a request/response round trip on an established connection, and a new
// connection up to the server's first line.

// redirectEnv is an env with the client's egress port portL7 sent to the
// forwarding engine.
func redirectEnv(t testing.TB) *env {
	e := newEnv(t)
	port, err := e.proxy.Ensure(RedirectKey{EndpointID: clientID, Port: portL7, Direction: datapath.Egress, Parser: parserFwd}, nil)
	must(t, err)
	e.attach(true, true)
	e.policy(datapath.Egress, port, 0)
	// The server's ingress allows the client too.
	must(t, e.progs.UpsertPolicy(tcpolicyKey(serverID, clientID, datapath.Ingress, portL7)))
	must(t, e.progs.UpsertPolicy(tcpolicyKey(serverID, clientID, datapath.Ingress, portPlain)))
	return e
}

// connectClient connects from the client to port and reads the server's
// first line.
func (e *env) connectClient(port uint16) (net.Conn, error) {
	var c net.Conn
	err := podnet.InNetns(e.client.NS, func() (err error) {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(e.server.IP, port).String(), 5*time.Second)
		return err
	})
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := readLine(c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// roundTrips sends n one-line requests on c, each answered by the echo,
// and returns the mean time of one.
func roundTrips(c net.Conn, n int) (time.Duration, error) {
	buf := make([]byte, 64)
	start := time.Now()
	for range n {
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return 0, err
		}
		if _, err := readFull(c, buf[:5]); err != nil {
			return 0, err
		}
	}
	return time.Since(start) / time.Duration(n), nil
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// connects opens and closes n connections to port, each up to the
// server's first line, and returns the mean time of one.
func (e *env) connects(port uint16, n int) (time.Duration, error) {
	start := time.Now()
	for range n {
		c, err := e.connectClient(port)
		if err != nil {
			return 0, err
		}
		c.Close()
	}
	return time.Since(start) / time.Duration(n), nil
}

func TestFiguresRedirect(t *testing.T) {
	figure.Require(t)
	e := redirectEnv(t)
	const trips, conns = 5000, 300
	rtt := map[uint16]time.Duration{}
	conn := map[uint16]time.Duration{}
	for _, port := range []uint16{portPlain, portL7, portPlain, portL7} { // interleaved: the machine's load shifts
		c, err := e.connectClient(port)
		must(t, err)
		d, err := roundTrips(c, trips)
		c.Close()
		must(t, err)
		rtt[port] += d / 2
		d, err = e.connects(port, conns)
		must(t, err)
		conn[port] += d / 2
	}
	figure.Print("l7.redirect.rtt_us", float64(rtt[portL7].Nanoseconds())/1e3, "µs")
	figure.Print("l7.redirect.rtt_ratio", float64(rtt[portL7])/float64(rtt[portPlain]), "x")
	figure.Print("l7.redirect.connect_us", float64(conn[portL7].Nanoseconds())/1e3, "µs")
	figure.Print("l7.redirect.connect_ratio", float64(conn[portL7])/float64(conn[portPlain]), "x")
}

// BenchmarkRedirectRoundTrip is one request/response through the egress
// redirect and the forwarding engine (Plain: the same without the
// redirect).
func BenchmarkRedirectRoundTrip(b *testing.B) {
	for _, c := range []struct {
		name string
		port uint16
	}{{"Proxied", portL7}, {"Plain", portPlain}} {
		b.Run(c.name, func(b *testing.B) {
			benchRoundTrip(b, c.port)
		})
	}
}

func benchRoundTrip(b *testing.B, port uint16) {
	b.Helper()
	e := redirectEnv(b)
	c, err := e.connectClient(port)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ResetTimer()
	if _, err := roundTrips(c, b.N); err != nil {
		b.Fatal(err)
	}
}

func tcpolicyKey(ep, peer uint32, dir datapath.Direction, port uint16) tcpolicy.Key {
	return tcpolicy.Key{Endpoint: ep, Peer: peer, Direction: dir, Protocol: datapath.TCP, Port: port}
}
