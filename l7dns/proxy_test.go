package l7dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/clustermesh/clustermesh/fqdn"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/l7dns/dnsserver"
)

func TestAllowedAndDenied(t *testing.T) {
	server := testServer(t, nil)
	p, log := newProxy(t, Config{})
	f := startFront(t, p, server, mustRules(t, PortRuleDNS{MatchName: "checkout.east.example"}, PortRuleDNS{MatchPattern: "*.west.example"}))
	for _, network := range []string{"udp", "tcp"} {
		addr := f.udp
		if network == "tcp" {
			addr = f.tcp
		}
		a := ask(t, network, addr, "Checkout.east.example.", dns.TypeA)
		if a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1 || a.Answer[0].(*dns.A).A.String() != "10.1.0.5" {
			t.Fatalf("%s: allowed query answered %v", network, a)
		}
		flows := log.take()
		if len(flows) != 2 {
			t.Fatalf("%s: %d flows for an allowed query: %v", network, len(flows), flows)
		}
		checkFlow(t, flows[0], network, false, flowpb.Verdict_FORWARDED)
		checkFlow(t, flows[1], network, true, flowpb.Verdict_FORWARDED)
		d := flows[1].GetL7().GetDns()
		if d.Query != "Checkout.east.example." || !slices.Equal(d.Ips, []string{"10.1.0.5"}) || d.Ttl != 30 ||
			!slices.Equal(d.Qtypes, []string{"A"}) || !slices.Equal(d.Rrtypes, []string{"A"}) || d.Rcode != 0 ||
			d.ObservationSource != "proxy" || flows[1].GetL7().LatencyNs == 0 {
			t.Fatalf("%s: answer's l7.dns %v", network, d)
		}

		if a := ask(t, network, addr, "a.west.example.", dns.TypeA); len(a.Answer) != 1 {
			t.Fatalf("%s: pattern-allowed query answered %v", network, a)
		}
		log.take()

		a = ask(t, network, addr, "alias.east.example.", dns.TypeA)
		if a.Rcode != dns.RcodeRefused || len(a.Answer) != 0 {
			t.Fatalf("%s: denied query answered %v", network, a)
		}
		flows = log.take()
		if len(flows) != 1 {
			t.Fatalf("%s: %d flows for a denied query", network, len(flows))
		}
		checkFlow(t, flows[0], network, false, flowpb.Verdict_DROPPED)
		if q := flows[0].GetL7().GetDns().Query; q != "alias.east.example." {
			t.Fatalf("%s: denied query's flow names %q", network, q)
		}
	}
	if got := testutil.ToFloat64(p.m.queries.WithLabelValues("denied")); got != 2 {
		t.Fatalf("denied queries counted %v, want 2", got)
	}
	if a := ask(t, "tcp", f.tcp, "checkout.east.example.", dns.TypeAXFR); a.Rcode != dns.RcodeNotImplemented {
		t.Fatalf("a zone transfer answered %v", a)
	}
	if flows := log.take(); len(flows) != 1 || flows[0].Verdict != flowpb.Verdict_ERROR {
		t.Fatalf("a zone transfer's flows: %v", flows)
	}
}

func checkFlow(t *testing.T, f *flowpb.Flow, network string, reply bool, v flowpb.Verdict) {
	t.Helper()
	typ, src, srcID := flowpb.L7FlowType_REQUEST, uint32(1000), uint32(7)
	if reply {
		typ, src, srcID = flowpb.L7FlowType_RESPONSE, 2000, 0
	}
	if f.Verdict != v || f.Type != flowpb.FlowType_L7 || f.EventType.GetType() != 129 || f.L7.GetType() != typ ||
		f.IsReply.GetValue() != reply || f.Source.GetIdentity() != src || f.Source.GetID() != srcID ||
		f.TrafficDirection != flowpb.TrafficDirection_EGRESS || f.IP.GetIpVersion() != flowpb.IPVersion_IPv4 || f.Time == nil {
		t.Fatalf("%s flow: %v", network, f)
	}
	if (network == "tcp") != (f.L4.GetTCP() != nil) || (network == "udp") != (f.L4.GetUDP() != nil) {
		t.Fatalf("%s flow's layer 4: %v", network, f.L4)
	}
}

func TestTruncatedAnswerRetriedOverTCP(t *testing.T) {
	server := testServer(t, nil)
	cache, err := fqdn.New(fqdn.Config{})
	if err != nil {
		t.Fatal(err)
	}
	p, log := newProxy(t, Config{Cache: cache})
	f := startFront(t, p, server, mustRules(t, PortRuleDNS{MatchPattern: "*"}))
	a := ask(t, "udp", f.udp, "big.east.example.", dns.TypeA)
	if !a.Truncated || len(a.Answer) >= 60 {
		t.Fatalf("UDP: %d records, tc %v; want a truncated answer relayed", len(a.Answer), a.Truncated)
	}
	a = ask(t, "tcp", f.tcp, "big.east.example.", dns.TypeA)
	if a.Truncated || len(a.Answer) != 60 {
		t.Fatalf("TCP: %d records, tc %v", len(a.Answer), a.Truncated)
	}
	if n := len(cache.Lookup("big.east.example")); n != 60 {
		t.Fatalf("cache holds %d of the 60 addresses", n)
	}
	if n := len(log.take()); n != 4 {
		t.Fatalf("%d flows for two queries", n)
	}
}

// TestCacheBeforeRelease: the subscriber of a toFQDNs selector is told an
// answer's addresses (through its CNAME chain) before the client has the
// answer, and holds them for at least the minimum TTL.
func TestCacheBeforeRelease(t *testing.T) {
	server := testServer(t, nil)
	now := time.Unix(1_000_000, 0)
	cache, err := fqdn.New(fqdn.Config{MinTTL: 10 * time.Second, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var told []netip.Addr
	cancel, err := cache.Subscribe(fqdn.Selector{MatchName: "alias.east.example"}, func(ch fqdn.Change) {
		mu.Lock()
		told = append(told, ch.Added...)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	p, _ := newProxy(t, Config{Cache: cache})
	f := startFront(t, p, server, mustRules(t, PortRuleDNS{MatchPattern: "*.east.example"}))

	a := ask(t, "udp", f.udp, "alias.east.example.", dns.TypeA)
	if len(a.Answer) != 2 {
		t.Fatalf("alias: %v", a)
	}
	mu.Lock()
	got := slices.Clone(told)
	mu.Unlock()
	if !slices.Equal(got, []netip.Addr{netip.MustParseAddr("10.1.0.5")}) {
		t.Fatalf("when the client had the answer, the subscriber had been told %v", got)
	}
	if got := cache.Lookup("checkout.east.example"); len(got) != 1 {
		t.Fatalf("the CNAME's target holds %v", got)
	}

	ask(t, "tcp", f.tcp, "short.east.example.", dns.TypeA) // TTL 1: held for MinTTL
	if n := cache.Expire(now.Add(9 * time.Second)); n != 0 {
		t.Fatalf("%d addresses expired before the minimum TTL", n)
	}
	if n := cache.Expire(now.Add(10 * time.Second)); n != 1 || cache.Lookup("short.east.example") != nil {
		t.Fatalf("%d addresses expired at the minimum TTL; short holds %v", n, cache.Lookup("short.east.example"))
	}
	if n := cache.Expire(now.Add(30 * time.Second)); n != 2 {
		t.Fatalf("%d addresses expired at the answer's TTL", n)
	}

	// A denied query or an error answer caches nothing.
	ask(t, "udp", f.udp, "nothing.east.example.", dns.TypeA)
	if st := cache.Stats(); st.Names != 0 {
		t.Fatalf("NXDOMAIN cached: %+v", st)
	}
}

func TestMalformedQueries(t *testing.T) {
	p, log := newProxy(t, Config{MaxQuerySize: 512})
	meta := Meta{Source: netip.MustParseAddrPort("10.0.0.1:5353"), Destination: netip.MustParseAddrPort("127.0.0.1:9"),
		Rules: mustRules(t, PortRuleDNS{MatchPattern: "*"})}
	q := new(dns.Msg)
	q.SetQuestion("example.com.", dns.TypeA)
	valid, _ := q.Pack()
	loop := append(slices.Clone(valid[:12]), 0xC0, 12, 0, 1, 0, 1) // a name pointing at itself
	twoQuestions := slices.Clone(valid)
	twoQuestions[5] = 2
	noQuestion := slices.Clone(valid[:12])
	noQuestion[5] = 0
	resp := slices.Clone(valid)
	resp[2] |= 0x80
	update := slices.Clone(valid)
	update[2] |= dns.OpcodeUpdate << 3
	trailing := append(slices.Clone(valid), 0)
	cases := map[string][]byte{
		ReasonTruncated:       valid[:len(valid)-2],
		ReasonCompressionLoop: loop,
		ReasonBadCounts:       twoQuestions,
		ReasonQuestionCount:   noQuestion,
		ReasonNotQuery:        resp,
		ReasonTooLarge:        make([]byte, 513),
	}
	for reason, b := range cases {
		err := p.ServeUDP(context.Background(), meta, b, func([]byte) error {
			t.Fatalf("%s: a malformed query was answered", reason)
			return nil
		})
		var pe *ParseError
		if !errors.As(err, &pe) || pe.Reason != reason || !errors.Is(err, ErrMalformed) {
			t.Fatalf("%s: %v", reason, err)
		}
		if got := testutil.ToFloat64(p.m.malformed.WithLabelValues("query", reason)); got != 1 {
			t.Fatalf("%s counted %v times", reason, got)
		}
		flows := log.take()
		if len(flows) != 1 || flows[0].Verdict != flowpb.Verdict_ERROR || flows[0].GetL7().GetDns() == nil {
			t.Fatalf("%s: flows %v", reason, flows)
		}
	}
	for name, b := range map[string][]byte{"update": update, "trailing": trailing} {
		if err := p.ServeUDP(context.Background(), meta, b, nil); !errors.Is(err, ErrMalformed) {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

// TestMalformedTCP: a frame over the limit ends the connection.
func TestMalformedTCP(t *testing.T) {
	p, log := newProxy(t, Config{MaxQuerySize: 512})
	client, proxySide := net.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- p.ServeTCP(context.Background(), Meta{Source: netip.MustParseAddrPort("10.0.0.1:1")}, proxySide)
	}()
	if _, err := client.Write([]byte{0x10, 0x00}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrMalformed) {
		t.Fatalf("ServeTCP ended with %v", err)
	}
	client.Close()
	if got := testutil.ToFloat64(p.m.malformed.WithLabelValues("query", ReasonTooLarge)); got != 1 || len(log.take()) != 1 {
		t.Fatalf("too large counted %v", got)
	}
}

// rawServer answers each UDP query through answer (nil: never).
func rawServer(t *testing.T, answer func(q *dns.Msg) [][]byte) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil || answer == nil {
				continue
			}
			for _, b := range answer(q) {
				_, _ = pc.WriteTo(b, from)
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

func TestAnswerValidated(t *testing.T) {
	server := rawServer(t, func(q *dns.Msg) [][]byte {
		wrongID := new(dns.Msg)
		wrongID.SetReply(q)
		wrongID.Id++
		wrongID.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 9}, A: net.IPv4(6, 6, 6, 6)}}
		wrongName := wrongID.Copy()
		wrongName.Id = q.Id
		wrongName.Question[0].Name = "evil.example."
		right := wrongName.Copy()
		right.Question[0].Name = q.Question[0].Name
		right.Answer[0].(*dns.A).A = net.IPv4(10, 9, 9, 9)
		var out [][]byte
		for _, m := range []*dns.Msg{wrongID, wrongName, right} {
			b, _ := m.Pack()
			out = append(out, b)
		}
		return append([][]byte{{1, 2, 3}}, out...)
	})
	p, _ := newProxy(t, Config{})
	f := startFront(t, p, server, mustRules(t, PortRuleDNS{MatchPattern: "*"}))
	a := ask(t, "udp", f.udp, "x.example.", dns.TypeA)
	if len(a.Answer) != 1 || a.Answer[0].(*dns.A).A.String() != "10.9.9.9" {
		t.Fatalf("relayed %v", a)
	}
	if got := testutil.ToFloat64(p.m.upstream.WithLabelValues("mismatch")); got != 2 {
		t.Fatalf("mismatched answers counted %v, want 2", got)
	}
	if got := testutil.ToFloat64(p.m.malformed.WithLabelValues("response", ReasonTruncated)); got != 1 {
		t.Fatalf("truncated answers counted %v", got)
	}
}

func TestLimits(t *testing.T) {
	silent := rawServer(t, nil)
	p, log := newProxy(t, Config{MaxConcurrent: 1, QueryTimeout: time.Minute, ClientQPS: 1, ClientBurst: 2})
	meta := func(port uint16) Meta {
		return Meta{Source: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), port), Destination: silent,
			Rules: mustRules(t, PortRuleDNS{MatchPattern: "*"})}
	}
	q := new(dns.Msg)
	q.SetQuestion("example.com.", dns.TypeA)
	raw, _ := q.Pack()
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan *dns.Msg, 1)
	go func() {
		_ = p.ServeUDP(ctx, meta(1), raw, func(b []byte) error {
			m := new(dns.Msg)
			_ = m.Unpack(b)
			first <- m
			return nil
		})
	}()
	testenv.WaitFor(t, 5*time.Second, "one query in flight", func() bool { return testutil.ToFloat64(p.m.inFlight) == 1 })
	var second dns.Msg
	if err := p.ServeUDP(context.Background(), meta(2), raw, func(b []byte) error { return second.Unpack(b) }); err != nil {
		t.Fatal(err)
	}
	if second.Rcode != dns.RcodeServerFailure || testutil.ToFloat64(p.m.rejected.WithLabelValues("concurrency")) != 1 {
		t.Fatalf("over the concurrency limit: rcode %d", second.Rcode)
	}
	cancel() // the first gives up: SERVFAIL
	if m := <-first; m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("unanswered query got rcode %d", m.Rcode)
	}
	// The client's burst of 2 is spent.
	if err := p.ServeUDP(context.Background(), meta(3), raw, nil); !isOverloaded(err) {
		t.Fatalf("over the client's rate: %v", err)
	}
	flows := log.take()
	if v := flows[len(flows)-1]; v.Verdict != flowpb.Verdict_ERROR || !v.IsReply.GetValue() {
		t.Fatalf("the unanswered query's last flow: %v", v)
	}
}

func TestTCPIdleTimeout(t *testing.T) {
	p, _ := newProxy(t, Config{TCPIdleTimeout: 20 * time.Millisecond})
	client, proxySide := net.Pipe()
	defer client.Close()
	done := make(chan error, 1)
	go func() { done <- p.ServeTCP(context.Background(), Meta{}, proxySide) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("idle connection ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an idle connection was not closed")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, cfg := range []Config{{MaxConcurrent: -1}, {MaxQuerySize: 10}, {MaxResponseSize: 70000}, {ClientQPS: -1}, {QueryTimeout: -1}} {
		if _, err := New(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
	if _, err := CompileRules([]PortRuleDNS{{MatchName: "a"}, {}}); !errors.Is(err, fqdn.ErrEmptySelector) {
		t.Errorf("empty rule: %v", err)
	}
	var none *Rules
	if none.Allows("a.") || mustRules(t).Allows("a.") {
		t.Error("no rules allow a name")
	}
}

// TestIngressIPv6: a query to a local server (ingress) over IPv6: the
// endpoint is the flows' server side, IPv6 addresses and version.
func TestIngressIPv6(t *testing.T) {
	z, err := dnsserver.ParseZone("east.example", strings.NewReader(testZone))
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	s := dnsserver.Start(z, pc, nil)
	defer s.Close(context.Background())
	p, log := newProxy(t, Config{})
	meta := Meta{Source: netip.MustParseAddrPort("[::1]:40000"), Destination: netip.MustParseAddrPort(pc.LocalAddr().String()),
		SourceIdentity: 2, DestinationIdentity: 3000, EndpointID: 9, Direction: flowpb.TrafficDirection_INGRESS,
		Rules: mustRules(t, PortRuleDNS{MatchName: "checkout.east.example"})}
	q := new(dns.Msg)
	q.SetQuestion("checkout.east.example.", dns.TypeAAAA)
	raw, _ := q.Pack()
	var a dns.Msg
	if err := p.ServeUDP(context.Background(), meta, raw, func(b []byte) error { return a.Unpack(b) }); err != nil {
		t.Fatal(err)
	}
	if len(a.Answer) != 1 || a.Answer[0].(*dns.AAAA).AAAA.String() != "fd00::5" {
		t.Fatalf("answer %v", &a)
	}
	flows := log.take()
	if len(flows) != 2 {
		t.Fatalf("%d flows", len(flows))
	}
	req, resp := flows[0], flows[1]
	if req.IP.IpVersion != flowpb.IPVersion_IPv6 || req.IP.Source != "::1" || req.Destination.GetID() != 9 ||
		req.Destination.GetIdentity() != 3000 || req.Source.GetID() != 0 || req.TrafficDirection != flowpb.TrafficDirection_INGRESS ||
		req.L4.GetUDP().GetSourcePort() != 40000 {
		t.Fatalf("query flow %v", req)
	}
	if resp.Source.GetID() != 9 || resp.L4.GetUDP().GetDestinationPort() != 40000 ||
		!slices.Equal(resp.GetL7().GetDns().GetIps(), []string{"fd00::5"}) || !slices.Equal(resp.GetL7().GetDns().GetQtypes(), []string{"AAAA"}) {
		t.Fatalf("answer flow %v", resp)
	}
}

// tcpServer answers DNS over TCP on loopback with answer(connection
// number from 1, query): the answer, and whether to close the connection
// after it. It returns the address and the connections accepted so far.
func tcpServer(t *testing.T, answer func(conn int, q *dns.Msg) (*dns.Msg, bool)) (netip.AddrPort, func() int) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := 0
	serve := func(c net.Conn, n int) {
		defer wg.Done()
		defer c.Close()
		for {
			b, err := readFrame(c, 65535)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(b) != nil {
				return
			}
			m, last := answer(n, q)
			out, _ := m.Pack()
			if writeFrame(c, out) != nil || last {
				return
			}
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns++
			n := conns
			mu.Unlock()
			wg.Add(1)
			go serve(c, n)
		}
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
	return netip.MustParseAddrPort(l.Addr().String()), func() int { mu.Lock(); defer mu.Unlock(); return conns }
}

// askOnOneConn asks the proxy's TCP front for x.example. n times on one
// connection and returns the rcodes.
func askOnOneConn(t *testing.T, addr string, n int) []int {
	t.Helper()
	c := &dns.Client{Net: "tcp"}
	conn, err := c.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var rcodes []int
	for range n {
		q := new(dns.Msg)
		q.SetQuestion("x.example.", dns.TypeA)
		a, _, err := c.ExchangeWithConnContext(context.Background(), q, conn)
		if err != nil {
			t.Fatal(err)
		}
		rcodes = append(rcodes, a.Rcode)
	}
	return rcodes
}

// TestTCPUpstreamMismatch: a TCP server answering with another id gets
// the client SERVFAIL, and the next query a new server connection.
func TestTCPUpstreamMismatch(t *testing.T) {
	server, conns := tcpServer(t, func(n int, q *dns.Msg) (*dns.Msg, bool) {
		m := new(dns.Msg)
		m.SetReply(q)
		if n == 1 {
			m.Id++
		}
		return m, false
	})
	p, _ := newProxy(t, Config{})
	f := startFront(t, p, server, mustRules(t, PortRuleDNS{MatchPattern: "*"}))
	if got := askOnOneConn(t, f.tcp, 2); !slices.Equal(got, []int{dns.RcodeServerFailure, dns.RcodeSuccess}) {
		t.Fatalf("rcodes %v", got)
	}
	if conns() != 2 || testutil.ToFloat64(p.m.upstream.WithLabelValues("mismatch")) != 1 {
		t.Fatalf("%d server connections", conns())
	}
}

// TestTCPUpstreamClosesBetweenQueries: a server closing its connection
// after each answer (as servers do after a number of queries or an idle
// time) costs the client nothing: the query is retried on a new one.
func TestTCPUpstreamClosesBetweenQueries(t *testing.T) {
	server, conns := tcpServer(t, func(_ int, q *dns.Msg) (*dns.Msg, bool) {
		m := new(dns.Msg)
		m.SetReply(q)
		return m, true
	})
	p, _ := newProxy(t, Config{})
	f := startFront(t, p, server, mustRules(t, PortRuleDNS{MatchPattern: "*"}))
	if got := askOnOneConn(t, f.tcp, 3); !slices.Equal(got, []int{0, 0, 0}) {
		t.Fatalf("rcodes %v", got)
	}
	if conns() != 3 || testutil.ToFloat64(p.m.upstream.WithLabelValues("failed")) != 0 {
		t.Fatalf("%d server connections", conns())
	}
}

// TestRulesUpdateOpenConnection: rules replaced while a TCP connection is
// open apply from its next query; invalid ones leave the previous.
func TestRulesUpdateOpenConnection(t *testing.T) {
	server := testServer(t, nil)
	p, _ := newProxy(t, Config{})
	rules := mustRules(t, PortRuleDNS{MatchPattern: "*.east.example"})
	f := startFront(t, p, server, rules)
	c := &dns.Client{Net: "tcp"}
	conn, err := c.Dial(f.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	query := func() int {
		q := new(dns.Msg)
		q.SetQuestion("checkout.east.example.", dns.TypeA)
		a, _, err := c.ExchangeWithConnContext(context.Background(), q, conn)
		if err != nil {
			t.Fatal(err)
		}
		return a.Rcode
	}
	if rc := query(); rc != dns.RcodeSuccess {
		t.Fatalf("rcode %d before the update", rc)
	}
	if err := rules.Update([]PortRuleDNS{{MatchName: "other.example"}}); err != nil {
		t.Fatal(err)
	}
	if rc := query(); rc != dns.RcodeRefused {
		t.Fatalf("rcode %d after the update", rc)
	}
	if err := rules.Update([]PortRuleDNS{{MatchPattern: "bad name"}}); !errors.Is(err, fqdn.ErrBadChars) {
		t.Fatalf("invalid rules: %v", err)
	}
	if got := rules.Rules(); len(got) != 1 || got[0].MatchName != "other.example" {
		t.Fatalf("rules after a refused update: %v", got)
	}
}
