package socklb

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/datapath/internal/dptest"
)

// readEvent reads the next translation event (failing after 5 s).
func readEvent(t *testing.T, r *flows.Reader) flows.Flow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := r.Read(ctx)
	dptest.NoErr(t, err)
	return f
}

// TestSockLBEvents: real connects and datagrams of a client in the test's
// cgroup to a service address, through the attached programs, each yield
// a translation event naming the service and the backend, the socket, its
// network namespace and cgroup; a datagram only when its socket first
// reaches that backend.
func TestSockLBEvents(t *testing.T) {
	e := newLBEnv(t, 1, 1)
	dptest.ServeTCP(t, e.clusterNS(1), c1a.addr4(backendPort), c1a.name)
	dptest.ServeUDP(t, e.clusterNS(1), c1a.addr4(backendPort), c1a.name)
	dptest.NoErr(t, e.maps.UpsertService(svcTCP, slots(false, datapath.TCP, []lbBackend{c1a})))
	dptest.NoErr(t, e.maps.UpsertService(svcUDP, slots(false, datapath.UDP, []lbBackend{c1a})))
	r, err := e.lb.OpenEvents()
	dptest.NoErr(t, err)
	defer r.Close()
	var netns uint64
	dptest.NoErr(t, dptest.InNetns(e.clientNS, func() (err error) { netns, err = NetnsCookie(); return err }))
	cgroup, err := CgroupID(e.cgroup)
	dptest.NoErr(t, err)
	if netns == 0 || cgroup == 0 {
		t.Fatalf("network namespace cookie %d, cgroup id %d", netns, cgroup)
	}

	noErrors(t, e.runClient(clientReq{Op: "tcp", Addr: tcpAddr, N: 1}))
	f := readEvent(t, r)
	if f.Time.IsZero() || time.Since(f.Time).Abs() > time.Minute || f.SocketCookie == 0 {
		t.Errorf("event time %v, socket cookie %d", f.Time, f.SocketCookie)
	}
	f.Time, f.SocketCookie = time.Time{}, 0
	want := flows.Flow{
		Kind: flows.KindSockTranslate, Verdict: flows.VerdictTranslated, Direction: datapath.Egress,
		Dst: c1a.addr4(backendPort), DstCluster: 1, Protocol: datapath.TCP,
		Service: netip.MustParseAddrPort(tcpAddr), XlatePoint: flows.XlatePostForward,
		NetnsCookie: netns, CgroupID: cgroup,
	}
	if f != want {
		t.Fatalf("connect event\n got  %+v\n want %+v", f, want)
	}

	// A socket bound to an address reports it as the source.
	resp := e.runClient(clientReq{Op: "tcp", Addr: tcpAddr, Addr2: clusterAddr4(1, 1).String() + ":0", N: 1})
	noErrors(t, resp)
	if f := readEvent(t, r); len(resp.Locals) != 1 || resp.Locals[f.Src.String()] != 1 || f.Service.String() != tcpAddr {
		t.Fatalf("bound socket's event %+v, its local address %v", f, resp.Locals)
	}

	// Five datagrams of one socket to the one backend: one event.
	noErrors(t, e.runClient(clientReq{Op: "udp", Addr: "10.96.0.10:53", N: 5}))
	if f := readEvent(t, r); f.Protocol != datapath.UDP || f.Service.String() != "10.96.0.10:53" || f.Dst != c1a.addr4(backendPort) {
		t.Fatalf("datagram event %+v", f)
	}
	if n := r.Pending(); n != 0 {
		t.Fatalf("%d bytes of events pending, want none", n)
	}
	c, err := e.lb.Counters()
	dptest.NoErr(t, err)
	if c.Connects != 2 || c.Datagrams != 5 || c.Events != 3 || c.EventsLost != 0 || c.Refused != 0 {
		t.Fatalf("counters %+v", c)
	}
	if lost, err := r.Lost(); err != nil || lost != 0 {
		t.Fatalf("Lost() = %d, %v", lost, err)
	}
}

// TestSockLBEventsIPv6: an IPv6 connect, and an IPv4 service dialled by
// a dual-stack socket (reported in IPv4).
func TestSockLBEventsIPv6(t *testing.T) {
	e := newLBEnv(t, 1, 1)
	dptest.ServeTCP(t, e.clusterNS(1), c1a.addr6(backendPort), c1a.name)
	dptest.ServeTCP(t, e.clusterNS(1), c1a.addr4(backendPort), c1a.name)
	dptest.NoErr(t, e.maps.UpsertService(svcTCP6, slots(true, datapath.TCP, []lbBackend{c1a})))
	dptest.NoErr(t, e.maps.UpsertService(svcTCP, slots(false, datapath.TCP, []lbBackend{c1a})))
	r, err := e.lb.OpenEvents()
	dptest.NoErr(t, err)
	defer r.Close()
	noErrors(t, e.runClient(clientReq{Op: "tcp", Addr: "[fd00:96::10]:80", N: 1}))
	if f := readEvent(t, r); f.Service.String() != "[fd00:96::10]:80" || f.Dst != c1a.addr6(backendPort) {
		t.Fatalf("IPv6 event %+v", f)
	}
	noErrors(t, e.runClient(clientReq{Op: "tcp-mapped", Addr: tcpAddr, N: 1}))
	if f := readEvent(t, r); f.Service.String() != tcpAddr || f.Dst != c1a.addr4(backendPort) {
		t.Fatalf("v4-mapped event %+v", f)
	}
}

// TestSockLBEventRing: the ring buffer's size is the config's, and a size
// that is not a power of two is refused, naming its option.
func TestSockLBEventRing(t *testing.T) {
	err := (Config{EventRingBytes: 5000}).Validate()
	dptest.ErrIs(t, err, datapath.ErrInvalidConfig)
	if !strings.Contains(err.Error(), "--sock-event-ring-bytes") {
		t.Errorf("error %q does not name the option", err)
	}
	e := newLBEnv(t, 1, 1)
	e.lb.mu.Lock()
	got := e.lb.objs.CmSockEvents.MaxEntries()
	e.lb.mu.Unlock()
	if got != DefaultEventRingBytes {
		t.Fatalf("ring of %d bytes, want %d", got, DefaultEventRingBytes)
	}
}
