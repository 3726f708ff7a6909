package l7dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/miekg/dns"

	"github.com/clustermesh/clustermesh/l7dns/dnsserver"
)

const testZone = `
$TTL 30
checkout      IN A     10.1.0.5
checkout      IN AAAA  fd00::5
alias         IN CNAME checkout
short     1   IN A     10.1.0.6
a.west.example.  IN A  10.3.0.1
`

// testServer is a real DNS server on loopback, UDP and TCP on one port.
func testServer(t testing.TB, z dnsserver.Zone) netip.AddrPort {
	t.Helper()
	if z == nil {
		var err error
		if z, err = dnsserver.ParseZone("east.example", strings.NewReader(testZone)); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 60; i++ {
			z.Add(&dns.A{Hdr: dns.RR_Header{Name: "big.east.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
				A: net.IPv4(10, 2, 0, byte(i))})
		}
	}
	pc, l := listenBoth(t)
	s := dnsserver.Start(z, pc, l)
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// listenBoth listens on UDP and TCP on one loopback port.
func listenBoth(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l
		}
		pc.Close()
	}
	t.Fatal("no loopback port free for both UDP and TCP")
	return nil, nil
}

// flowLog collects the proxy's flows.
type flowLog struct {
	mu    sync.Mutex
	flows []*flowpb.Flow
}

func (l *flowLog) add(f *flowpb.Flow) { l.mu.Lock(); l.flows = append(l.flows, f); l.mu.Unlock() }
func (l *flowLog) take() []*flowpb.Flow {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.flows
	l.flows = nil
	return out
}

// front is what the transparent proxy would be: a UDP socket and a TCP
// listener on loopback handing every datagram and connection to the
// proxy with the metadata of a client of identity 1000 asking server.
type front struct {
	udp, tcp string
	errs     chan error
}

func startFront(t testing.TB, p *Proxy, server netip.AddrPort, rules *Rules) *front {
	t.Helper()
	pc, l := listenBoth(t)
	ctx, cancel := context.WithCancel(context.Background())
	f := &front{udp: pc.LocalAddr().String(), tcp: l.Addr().String(), errs: make(chan error, 1000)}
	meta := func(client net.Addr) Meta {
		return Meta{Source: netip.MustParseAddrPort(client.String()), Destination: server,
			SourceIdentity: 1000, DestinationIdentity: 2000, EndpointID: 7,
			Direction: flowpb.TrafficDirection_EGRESS, Rules: rules}
	}
	report := func(err error) {
		if err != nil {
			select {
			case f.errs <- err:
			default:
			}
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := append([]byte(nil), buf[:n]...)
			wg.Add(1)
			go func() {
				defer wg.Done()
				report(p.ServeUDP(ctx, meta(from), q, func(b []byte) error {
					_, err := pc.WriteTo(b, from)
					return err
				}))
			}()
		}
	}()
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				report(p.ServeTCP(ctx, meta(c.RemoteAddr()), c))
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		pc.Close()
		l.Close()
		wg.Wait()
	})
	return f
}

func newProxy(t testing.TB, cfg Config) (*Proxy, *flowLog) {
	t.Helper()
	log := &flowLog{}
	if cfg.Flows == nil {
		cfg.Flows = log.add
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p, log
}

func mustRules(t testing.TB, rules ...PortRuleDNS) *Rules {
	t.Helper()
	r, err := CompileRules(rules)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func ask(t testing.TB, network, addr, name string, qt uint16) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qt)
	a, _, err := (&dns.Client{Net: network}).Exchange(q, addr)
	if err != nil {
		t.Fatalf("asking %s for %s over %s: %v", addr, name, network, err)
	}
	return a
}

func isOverloaded(err error) bool { return errors.Is(err, ErrOverloaded) }
