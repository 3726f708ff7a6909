package enforcer

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/miekg/dns"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/fqdn"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/l7dns"
	"github.com/clustermesh/clustermesh/l7dns/dnsserver"
	"github.com/clustermesh/clustermesh/l7proxy"
	"github.com/clustermesh/clustermesh/policy"
	"github.com/clustermesh/clustermesh/statesource"
)

// dnsHandler is l7dns's engine behind l7proxy, judged by the redirect's
// PortRules (the wiring the agent does), recording when each answer left.
type dnsHandler struct {
	p       *l7dns.Proxy
	mu      sync.Mutex
	replied []time.Time
}

func (h *dnsHandler) ServeConn(_ context.Context, conn net.Conn, _ l7proxy.Metadata) { conn.Close() }

func (h *dnsHandler) ServeDatagram(ctx context.Context, d l7proxy.Datagram) {
	md := d.Meta
	var rules *l7dns.Rules
	if pr, ok := md.Rules.(*PortRules); ok {
		if p, ok := pr.For(md.DstIdentity, policy.UDP, md.OrigDst.Port()); ok {
			conv := make([]l7dns.PortRuleDNS, len(p.DNS))
			for i, r := range p.DNS {
				conv[i] = l7dns.PortRuleDNS{MatchName: r.MatchName, MatchPattern: r.MatchPattern}
			}
			rules, _ = l7dns.CompileRules(conv)
		}
	}
	meta := l7dns.Meta{Source: md.OrigSrc, Destination: md.OrigDst, SourceIdentity: md.SrcIdentity, DestinationIdentity: md.DstIdentity,
		EndpointID: md.EndpointID, Direction: flowpb.TrafficDirection_EGRESS, Rules: rules,
		Dial: func(ctx context.Context) (net.Conn, error) { return md.DialUpstream(ctx) }}
	h.p.ServeUDP(ctx, meta, d.Payload, func(b []byte) error {
		h.mu.Lock()
		h.replied = append(h.replied, time.Now())
		h.mu.Unlock()
		return d.Reply(b)
	})
}

func (h *dnsHandler) lastReply() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.replied[len(h.replied)-1]
}

// fqdnMesh is a node namespace with a frontend pod (east's, its egress
// enforced), a DNS server pod (kube-dns) and a web pod outside the mesh,
// the real proxy with l7dns's engine, the FQDN cache and the enforcer on
// real maps, under fqdnPolicy.
type fqdnMesh struct {
	node            *podnet.Node
	client, dns, ww *podnet.Pod
	progs           *tcpolicy.Programs
	h               *dnsHandler
	w               *timedWriter
	clock           *fqdnClock
	cache           *fqdn.Cache
	f               *fixture
}

const fqdnDNSID = 1<<16 + 50

func newFQDNMesh(t *testing.T, zone string) *fqdnMesh {
	maps, progs := openRealMaps(t)
	m := &fqdnMesh{progs: progs, clock: &fqdnClock{now: time.Now()}}
	var err error
	if m.node, err = podnet.NewNode(netip.MustParseAddr("10.215.0.254")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.node.Close() })
	for _, p := range []struct {
		pod  **podnet.Pod
		name string
		ip   string
	}{{&m.client, "frontend", "10.215.0.1"}, {&m.dns, "kube-dns", "10.215.0.53"}, {&m.ww, "www", "10.215.0.80"}} {
		if *p.pod, err = m.node.AddPod(p.name, netip.MustParseAddr(p.ip), "fq"+p.name[:3]); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 10*time.Second, "pod veths up", func() bool { return m.node.Up() == "" })
	inNode := func(fn func() error) error { return podnet.InNetns(m.node.NS, fn) }
	for a, id := range map[netip.Addr]uint32{m.client.IP: eastFrontend, m.dns.IP: fqdnDNSID} {
		if err := maps.UpsertIPCache(netip.PrefixFrom(a, 32), datapath.IPCacheEntry{Identity: id, ClusterID: 1}); err != nil {
			t.Fatal(err)
		}
	}
	z, err := dnsserver.ParseZone("example.com", strings.NewReader(zone))
	if err != nil {
		t.Fatal(err)
	}
	var pc net.PacketConn
	if err := podnet.InNetns(m.dns.NS, func() (err error) { pc, err = net.ListenPacket("udp", "10.215.0.53:53"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := dnsserver.Start(z, pc, nil)
	t.Cleanup(func() { srv.Close(context.Background()) })
	serveLines(t, m.ww, 443)

	if m.cache, err = fqdn.New(fqdn.Config{Now: m.clock.Now}); err != nil {
		t.Fatal(err)
	}
	dp, err := l7dns.New(l7dns.Config{Cache: m.cache, QueryTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	m.h = &dnsHandler{p: dp}
	px, err := l7proxy.New(l7proxy.Config{Handlers: map[string]l7proxy.Handler{"dns": m.h}, Identities: ipcacheIDs{maps},
		InNetns: inNode, StopGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	m.w = &timedWriter{Writer: progs, written: map[uint32]time.Time{}}
	m.f = startCfg(t, func(_ *fixture, cfg *Config) {
		cfg.Policy, cfg.Attacher, cfg.ProxyPorts = m.w, ProgramsAttacher{Programs: progs, InNetns: inNode}, L7Proxy(px)
		cfg.FQDN, cfg.IPCache = FQDNCache(m.cache), maps
	}, nil)
	m.f.writePolicy(t, "frontend.yaml", fqdnPolicy)
	m.f.e.SetLocalState(&statesource.State{Endpoints: []*statesource.Endpoint{
		{Namespace: "shop", Pod: "frontend-1", Node: "node-1", IP: m.client.IP, Labels: map[string]string{"app": "frontend"}, Interface: m.client.HostVeth},
	}})
	m.f.e.UpsertIdentity("east", eastFrontend, podLabels("east", "frontend"))
	m.f.e.UpsertIdentity("east", fqdnDNSID, (&wireEndpoint{ns: "kube-system", labels: map[string]string{"k8s-app": "kube-dns"}}).identity())
	close(m.f.ready)
	testenv.WaitFor(t, 10*time.Second, "frontend enforcing egress, DNS redirected", func() bool {
		for _, ep := range m.f.e.Status().Endpoints {
			if ep.State == StateEnforcing && ep.EnforceEgress && len(ep.Redirects) == 2 && ep.Redirects[0].ProxyPort != 0 {
				return true
			}
		}
		return false
	})
	return m
}

// query asks the DNS server, from the frontend, for name's A record.
func (m *fqdnMesh) query(t *testing.T, name string) *dns.Msg {
	t.Helper()
	a, err := m.tryQuery(name, 5*time.Second)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	return a
}

func (m *fqdnMesh) tryQuery(name string, timeout time.Duration) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	var a *dns.Msg
	err := podnet.InNetns(m.client.NS, func() (err error) {
		c := &dns.Client{Timeout: timeout}
		a, _, err = c.Exchange(q, "10.215.0.53:53")
		return err
	})
	return a, err
}

// dial reports whether the frontend connects to the web pod's 443.
func (m *fqdnMesh) dial() bool {
	var c net.Conn
	err := podnet.InNetns(m.client.NS, func() (err error) {
		c, err = net.DialTimeout("tcp", "10.215.0.80:443", 500*time.Millisecond)
		return err
	})
	if err == nil {
		c.Close()
	}
	return err == nil
}

// TestFQDNOnRealPackets (root): the whole FQDN path with real pieces: the
// frontend's query goes through the DNS redirect to l7dns's engine (which
// refuses a name the DNS rule does not allow), the allowed answer fills
// the FQDN cache, the enforcer gives the address a node-local identity in
// the real ipcache and the policy map, and the frontend connects to it;
// at the end of its TTL it cannot any more.
func TestFQDNOnRealPackets(t *testing.T) {
	m := newFQDNMesh(t, "www 30 IN A 10.215.0.80\n")
	if m.dial() {
		t.Fatal("the web pod is reachable before any answer")
	}
	if a := m.query(t, "evil.example.org"); a.Rcode != dns.RcodeRefused {
		t.Errorf("evil.example.org: rcode %s, want REFUSED (the DNS rule allows *.example.com)", dns.RcodeToString[a.Rcode])
	}
	a := m.query(t, "www.example.com")
	if a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1 {
		t.Fatalf("www.example.com: %v", a)
	}
	const first = localIdentityFlag + 1
	testenv.WaitFor(t, 5*time.Second, "the answer's address in the policy map", func() bool {
		ks, _ := m.progs.Policies()
		return slices.Contains(ks, https(first))
	})
	if !m.dial() {
		t.Fatal("the frontend cannot reach the address its allowed answer gave")
	}
	if s := m.f.e.Status(); s.FQDNAddresses != 1 {
		t.Errorf("status: %d FQDN addresses", s.FQDNAddresses)
	}
	m.cache.Expire(m.clock.add(2 * fqdn.DefaultMinTTL))
	testenv.WaitFor(t, 5*time.Second, "expired address revoked", func() bool {
		ks, _ := m.progs.Policies()
		return !slices.Contains(ks, https(first))
	})
	if m.dial() {
		t.Error("the frontend still reaches the address after its TTL")
	}
}

// TestFiguresFQDNEndToEnd: l7.fqdn.allow_p99_ms, the figure: from
// a DNS answer leaving the proxy (l7dns's engine behind l7proxy, answering
// the frontend) to the address's entry written in the real policy map,
// over 200 answers of distinct addresses (0 when the entry was written
// before the answer left: the cache is filled first).
func TestFiguresFQDNEndToEnd(t *testing.T) {
	figure.Require(t)
	const n = 200
	zone := ""
	for i := range n {
		zone += fmt.Sprintf("host%d 30 IN A 198.51.%d.%d\n", i, i/250, 1+i%250)
	}
	m := newFQDNMesh(t, zone)
	var lat []time.Duration
	lost := 0
	for i := range n {
		// A lost query or SERVFAIL (an upstream answer the proxy never
		// got, see the report of this test) is asked again, as a resolver
		// would.
		for try := 0; ; try++ {
			a, err := m.tryQuery(fmt.Sprintf("host%d.example.com", i), 2*time.Second)
			if err == nil && a.Rcode == dns.RcodeSuccess {
				break
			}
			if lost++; try == 3 {
				t.Fatalf("host%d: no answer 4 times: %v %v", i, a, err)
			}
		}
		id := uint32(localIdentityFlag + 1 + i)
		testenv.WaitFor(t, 5*time.Second, fmt.Sprintf("entry of host%d written", i), func() bool { _, ok := m.w.at(id); return ok })
		at, _ := m.w.at(id)
		lat = append(lat, max(0, at.Sub(m.h.lastReply())))
	}
	slices.Sort(lat)
	t.Logf("answer leaving the proxy → policy map: p50 %v, max %v; %d upstream answers lost (asked again)", lat[n/2], lat[n-1], lost)
	figure.Print("l7.fqdn.allow_p99_ms", float64(lat[n*99/100].Microseconds())/1000, "ms")
}
