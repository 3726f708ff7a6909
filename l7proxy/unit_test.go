package l7proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

func TestPortsStable(t *testing.T) {
	k := RedirectKey{EndpointID: 7, Port: 80, Direction: datapath.Ingress, Parser: "http"}
	free := func(uint16) bool { return true }
	a := newPorts(10000, 10009).candidates(k, free)
	b := newPorts(10000, 10009).candidates(k, free)
	if a != b || a < 10000 || a > 10009 {
		t.Fatalf("the same key got %d and %d in 10000-10009", a, b)
	}
	// Taken, or refused by the kernel: the next free one, wrapping.
	ps := newPorts(10000, 10009)
	other := k
	other.Parser = "dns"
	ps.used[a] = other
	busy := a + 1
	if busy > 10009 {
		busy = 10000
	}
	got := ps.candidates(k, func(p uint16) bool { return p != busy })
	if got == a || got == busy || got == 0 {
		t.Fatalf("with %d taken and %d refused, got %d", a, busy, got)
	}
	// Full: none.
	ps = newPorts(10000, 10000)
	ps.used[10000] = other
	if got := ps.candidates(k, free); got != 0 {
		t.Fatalf("a full range gave %d", got)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Handlers: map[string]Handler{"x": &fwdHandler{}}, Identities: idMap{}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]Config{
		"empty range":   {PortMin: 20, PortMax: 10, Handlers: ok.Handlers, Identities: ok.Identities},
		"no handlers":   {Identities: ok.Identities},
		"nil handler":   {Handlers: map[string]Handler{"x": nil}, Identities: ok.Identities},
		"no identities": {Handlers: ok.Handlers},
		"main table":    {RoutingTable: 254, Handlers: ok.Handlers, Identities: ok.Identities},
		"backoff":       {AcceptBackoffMin: time.Second, AcceptBackoffMax: time.Millisecond, Handlers: ok.Handlers, Identities: ok.Identities},
	} {
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Validate() = %v, want ErrInvalidConfig", name, err)
		}
	}
}

func origDstMsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	binary.NativeEndian.PutUint64(b[0:8], uint64(unix.CmsgLen(len(data))))
	binary.NativeEndian.PutUint32(b[8:12], uint32(level))
	binary.NativeEndian.PutUint32(b[12:16], uint32(typ))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func sockaddr4(ap netip.AddrPort) []byte {
	b := make([]byte, unix.SizeofSockaddrInet4)
	binary.NativeEndian.PutUint16(b[0:2], unix.AF_INET)
	binary.BigEndian.PutUint16(b[2:4], ap.Port())
	a := ap.Addr().As4()
	copy(b[4:8], a[:])
	return b
}

func sockaddr6(ap netip.AddrPort) []byte {
	b := make([]byte, unix.SizeofSockaddrInet6)
	binary.NativeEndian.PutUint16(b[0:2], unix.AF_INET6)
	binary.BigEndian.PutUint16(b[2:4], ap.Port())
	a := ap.Addr().As16()
	copy(b[8:24], a[:])
	return b
}

func TestParseOrigDst(t *testing.T) {
	v4 := netip.MustParseAddrPort("10.1.2.3:53")
	v6 := netip.MustParseAddrPort("[fd00::7]:8080")
	for _, c := range []struct {
		oob  []byte
		want netip.AddrPort
	}{
		{origDstMsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sockaddr4(v4)), v4},
		{origDstMsg(unix.SOL_IPV6, unix.IPV6_ORIGDSTADDR, sockaddr6(v6)), v6},
	} {
		got, err := parseOrigDst(c.oob)
		if err != nil || got != c.want {
			t.Errorf("parseOrigDst = %v, %v; want %v", got, err, c.want)
		}
	}
	for _, bad := range [][]byte{nil, {1, 2, 3}, origDstMsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, []byte{2, 0, 0, 53}),
		origDstMsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, make([]byte, 4))} {
		if _, err := parseOrigDst(bad); !errors.Is(err, ErrBadOrigDst) {
			t.Errorf("parseOrigDst(%x) = %v, want ErrBadOrigDst", bad, err)
		}
	}
}

func FuzzParseOrigDst(f *testing.F) {
	f.Add(origDstMsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sockaddr4(netip.MustParseAddrPort("10.1.2.3:53"))))
	f.Add(origDstMsg(unix.SOL_IPV6, unix.IPV6_ORIGDSTADDR, sockaddr6(netip.MustParseAddrPort("[fd00::7]:80"))))
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, oob []byte) {
		ap, err := parseOrigDst(oob)
		if err != nil && !errors.Is(err, ErrBadOrigDst) {
			t.Fatalf("error %v does not wrap ErrBadOrigDst", err)
		}
		if err == nil && !ap.IsValid() {
			t.Fatalf("no error and an invalid address")
		}
	})
}

// blockHandler holds each connection until its context is done (or, with
// ignoreCtx, until the connection is closed under it).
type blockHandler struct {
	ignoreCtx bool
	started   chan struct{}
}

func (h *blockHandler) ServeConn(ctx context.Context, conn net.Conn, _ Metadata) {
	h.started <- struct{}{}
	if h.ignoreCtx {
		io.Copy(io.Discard, conn)
		return
	}
	<-ctx.Done()
}

// nodeProxy is a Proxy in a fresh node namespace with one handler,
// listening for one redirect; it returns the port.
func nodeProxy(t *testing.T, h Handler, cfg Config) (*Proxy, *podnet.Node, uint16) {
	t.Helper()
	testenv.RequireRoot(t)
	node, err := podnet.NewNode(netip.MustParseAddr("10.214.0.254"))
	must(t, err)
	t.Cleanup(func() { node.Close() })
	cfg.Handlers = map[string]Handler{"block": h}
	cfg.Identities = idMap{}
	cfg.InNetns = func(fn func() error) error { return podnet.InNetns(node.NS, fn) }
	p, err := New(cfg)
	must(t, err)
	t.Cleanup(func() { p.Close() })
	port, err := p.Ensure(RedirectKey{EndpointID: 1, Port: 80, Direction: datapath.Ingress, Parser: "block"}, nil)
	must(t, err)
	return p, node, port
}

func dialIn(t *testing.T, node *podnet.Node, port uint16) net.Conn {
	t.Helper()
	var c net.Conn
	must(t, podnet.InNetns(node.NS, func() (err error) {
		c, err = net.Dial("tcp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
		return err
	}))
	t.Cleanup(func() { c.Close() })
	return c
}

// TestConnectionLimit: beyond MaxConnections a connection is closed at
// once and counted; a slot freed serves the next one.
func TestConnectionLimit(t *testing.T) {
	h := &blockHandler{started: make(chan struct{}, 4)}
	p, node, port := nodeProxy(t, h, Config{MaxConnections: 1, StopGrace: time.Second})
	first := dialIn(t, node, port)
	<-h.started
	// The reset may come before the dial returns, or after.
	err := podnet.InNetns(node.NS, func() error {
		c, err := net.Dial("tcp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
		return err
	})
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("over the limit: %v, want the connection closed", err)
	}
	if n := testutil.ToFloat64(p.m.rejected.WithLabelValues(rejectLimit)); n != 1 {
		t.Fatalf("rejected{limit} = %v, want 1", n)
	}
	first.Close()
	p.Remove(RedirectKey{EndpointID: 1, Port: 80, Direction: datapath.Ingress, Parser: "block"})
	if got := p.Redirects(); len(got) != 0 {
		t.Fatalf("redirects after Remove: %v", got)
	}
}

// TestGracefulStop: Close cancels the handlers, waits StopGrace for those
// that do not return, then closes their connections; the listener is gone
// (new connections refused).
func TestGracefulStop(t *testing.T) {
	h := &blockHandler{ignoreCtx: true, started: make(chan struct{}, 1)}
	p, node, port := nodeProxy(t, h, Config{StopGrace: 200 * time.Millisecond})
	c := dialIn(t, node, port)
	<-h.started
	start := time.Now()
	must(t, p.Close())
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("Close returned after %v, before the grace", d)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the connection stayed open after Close")
	}
	err := podnet.InNetns(node.NS, func() error {
		c, err := net.Dial("tcp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
		if err == nil {
			c.Close()
		}
		return err
	})
	if err == nil {
		t.Fatal("the proxy port still accepts after Close")
	}
	if _, err := p.Ensure(RedirectKey{Parser: "block"}, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ensure after Close: %v", err)
	}
}
