package l7dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/miekg/dns"

	"github.com/clustermesh/clustermesh/fqdn"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/l7dns/dnsserver"
)

// figureZone is n names under fig.example, each with an address of its own.
func figureZone(n int) (dnsserver.Zone, []string) {
	z := dnsserver.Zone{}
	var names []string
	for i := range n {
		name := fmt.Sprintf("n%d.fig.example.", i)
		z.Add(&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
			A: net.IPv4(10, 200, byte(i>>8), byte(i))})
		names = append(names, name)
	}
	return z, names
}

// stampedServer serves z on loopback UDP and records when each answer
// left it, by name.
func stampedServer(t testing.TB, z dnsserver.Zone) (netip.AddrPort, func(name string) time.Time) {
	t.Helper()
	var mu sync.Mutex
	sent := map[string]time.Time{}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
			m := z.Answer(q)
			mu.Lock()
			sent[q.Question[0].Name] = time.Now()
			mu.Unlock()
			_ = w.WriteMsg(m)
		})}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown(); <-done })
	return netip.MustParseAddrPort(pc.LocalAddr().String()), func(name string) time.Time {
		mu.Lock()
		defer mu.Unlock()
		return sent[name]
	}
}

// TestFiguresL7DNS prints (make bench):
//
//   - l7.fqdn.notify_p99_ms: the time from a DNS answer leaving a real DNS
//     server on loopback to the subscriber of a toFQDNs selector being
//     told the address, p99 over 2,000 names, through the proxy (the
//     answer read, validated, its addresses put into the fqdn cache);
//     the policy map write the enforcer does in its callback is not in
//     it.
func TestFiguresL7DNS(t *testing.T) {
	figure.Require(t)
	const n = 2000
	z, names := figureZone(n)
	server, sentAt := stampedServer(t, z)
	cache, err := fqdn.New(fqdn.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	told := map[netip.Addr]time.Time{}
	cancel, err := cache.Subscribe(fqdn.Selector{MatchPattern: "*.fig.example"}, func(ch fqdn.Change) {
		now := time.Now()
		mu.Lock()
		for _, a := range ch.Added {
			told[a] = now
		}
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	p, _ := newProxy(t, Config{Cache: cache, Flows: func(*flowpb.Flow) {}})
	f := startFront(t, p, server, mustRules(t, PortRuleDNS{MatchPattern: "*.fig.example"}))

	c := &dns.Client{Net: "udp"}
	conn, err := c.Dial(f.udp)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var took []time.Duration
	for i, name := range names {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		if _, _, err := c.ExchangeWithConnContext(context.Background(), q, conn); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		at, ok := told[netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)})]
		mu.Unlock()
		if !ok {
			t.Fatalf("%s answered, the subscriber not told", name)
		}
		took = append(took, at.Sub(sentAt(name)))
	}
	slices.Sort(took)
	pct := func(p float64) time.Duration { return took[int(p*float64(len(took)-1))] }
	t.Logf("answer leaving the server to the subscriber told, %d names: p50 %v, p99 %v, max %v", n, pct(0.5), pct(0.99), took[len(took)-1])
	figure.Print("l7.fqdn.notify_p99_ms", float64(pct(0.99).Microseconds())/1000, "ms")
}

// BenchmarkQuery is one query answered by a real DNS server on loopback,
// over UDP and over one TCP connection, directly and through the proxy
// (rules checked, flows built, the answer's address put into the cache
// with a subscriber).
func BenchmarkQuery(b *testing.B) {
	z, names := figureZone(256)
	server := testServer(b, z)
	cache, err := fqdn.New(fqdn.Config{})
	if err != nil {
		b.Fatal(err)
	}
	cancel, _ := cache.Subscribe(fqdn.Selector{MatchPattern: "*.fig.example"}, func(fqdn.Change) {})
	defer cancel()
	p, _ := newProxy(b, Config{Cache: cache, Flows: func(*flowpb.Flow) {}})
	f := startFront(b, p, server, mustRules(b, PortRuleDNS{MatchPattern: "*.fig.example"}))
	for _, bc := range []struct{ name, network, addr string }{
		{"udp/direct", "udp", server.String()}, {"udp/proxied", "udp", f.udp},
		{"tcp/direct", "tcp", server.String()}, {"tcp/proxied", "tcp", f.tcp},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := &dns.Client{Net: bc.network}
			conn, err := c.Dial(bc.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			q := new(dns.Msg)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				q.SetQuestion(names[i%len(names)], dns.TypeA)
				if _, _, err := c.ExchangeWithConnContext(context.Background(), q, conn); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
