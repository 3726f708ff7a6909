package enforcer

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/fqdn"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/policy"
	"github.com/clustermesh/clustermesh/wire"
)

// fakeProxy stands for l7proxy's redirects: a port per parser and
// direction, or an error while fail is set; it keeps the open redirects.
type fakeProxy struct {
	mu      sync.Mutex
	fail    bool
	calls   int
	removes int
	open    map[Redirect]*PortRules
}

const (
	httpIngressPort = 15001
	dnsEgressPort   = 15053
)

func (p *fakeProxy) Ensure(r Redirect, rules *PortRules) (uint16, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	if p.fail {
		return 0, errors.New("listener not open")
	}
	if p.open == nil {
		p.open = map[Redirect]*PortRules{}
	}
	p.open[r] = rules
	switch {
	case r.Parser == "http" && r.Ingress:
		return httpIngressPort, nil
	case r.Parser == "dns" && !r.Ingress:
		return dnsEgressPort, nil
	}
	return 15000, nil
}

func (p *fakeProxy) Remove(r Redirect) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.removes++
	delete(p.open, r)
}

func (p *fakeProxy) redirects() map[Redirect]*PortRules {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.open)
}

func (p *fakeProxy) setFail(v bool) {
	p.mu.Lock()
	p.fail = v
	p.mu.Unlock()
}

const l7CheckoutPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: checkout, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: checkout}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: west}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/v1/.*"}]
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "9090", protocol: TCP}]}]
`

func redirected(k tcpolicy.Key, port uint16) tcpolicy.Key { k.ProxyPort = port; return k }

// Entries with L7 rules are written with their listener's proxy port; the
// proxy reads their rules by (endpoint, direction, peer, port); remote
// identities are redirected incrementally; status shows the redirects.
func TestL7EntriesRedirectedToTheProxy(t *testing.T) {
	px := &fakeProxy{}
	f := startCfg(t, func(_ *fixture, cfg *Config) { cfg.ProxyPorts = px }, nil)
	f.writePolicy(t, "checkout.yaml", l7CheckoutPolicy)
	f.e.SetLocalState(localState())
	f.e.UpsertIdentity("east", eastCheckout, podLabels("east", "checkout"))
	f.e.UpsertIdentity("east", eastFrontend, podLabels("east", "frontend"))
	f.e.UpsertIdentity("west", westFrontend, podLabels("west", "frontend"))
	close(f.ready)
	west := redirected(allow(eastCheckout, westFrontend), httpIngressPort)
	testenv.WaitFor(t, 5*time.Second, "west's 8080 entry redirected", func() bool { return f.hasKey(west) })
	if f.hasKey(allow(eastCheckout, westFrontend)) || f.hasKey(allow(eastCheckout, eastFrontend)) {
		t.Error("a plain 8080 entry was written beside the redirected one, or east's frontend got 8080")
	}
	p, ok := f.e.L7Policy(eastCheckout, policy.Ingress, policy.TCP, 8080, westFrontend)
	if !ok || p.Parser != policy.ParserHTTP || len(p.HTTP) != 1 || p.HTTP[0].Path != "/v1/.*" {
		t.Fatalf("L7Policy(west, 8080) = %v, %v", p, ok)
	}
	for _, c := range []struct {
		peer  uint32
		port  uint16
		proto uint8
	}{{eastFrontend, 8080, policy.TCP}, {westFrontend, 9090, policy.TCP}, {westFrontend, 8080, policy.UDP}} {
		if p, ok := f.e.L7Policy(eastCheckout, policy.Ingress, c.proto, c.port, c.peer); ok {
			t.Errorf("L7Policy(%d, %d/%d) = %v: nothing redirects it", c.peer, c.port, c.proto, p)
		}
	}
	checkoutHTTP := Redirect{Endpoint: eastCheckout, Port: 8080, Ingress: true, Parser: "http"}
	open := px.redirects()
	if len(open) != 1 || open[checkoutHTTP] == nil {
		t.Fatalf("proxy redirects %v, want %v", open, checkoutHTTP)
	}
	if p, ok := open[checkoutHTTP].For(westFrontend, policy.TCP, 8080); !ok || len(p.HTTP) != 1 {
		t.Errorf("the redirect's rules for west: %v %v", p, ok)
	}
	if p, ok := open[checkoutHTTP].For(northFront, policy.TCP, 8080); ok {
		t.Errorf("the redirect's rules for north: %v, want none (refused)", p)
	}
	testenv.WaitFor(t, 5*time.Second, "status shows the redirect", func() bool {
		s := f.e.Status()
		for _, ep := range s.Endpoints {
			if ep.Pod == "checkout-2" {
				return s.RedirectedEntries == 1 && slices.Equal(ep.Redirects, []RedirectStatus{
					{Direction: "ingress", Protocol: "TCP", Ports: "8080", Parser: "http", ProxyPort: httpIngressPort, Peers: 1}})
			}
		}
		return false
	})
	// A new west frontend is redirected incrementally.
	const west2 = 2<<16 + 9
	f.e.UpsertIdentity("west", west2, podLabels("west", "frontend").With(wire.Label{Source: "k8s", Key: "v", Value: "2"}))
	testenv.WaitFor(t, 5*time.Second, "new west frontend redirected", func() bool {
		return f.hasKey(redirected(allow(eastCheckout, west2), httpIngressPort))
	})
	// The redirect's only peer relabelled: the redirect (its listener and
	// connections) stays.
	f.e.DeleteIdentity("west", west2)
	testenv.WaitFor(t, 5*time.Second, "west2 gone", func() bool { return !f.hasKey(redirected(allow(eastCheckout, west2), httpIngressPort)) })
	f.e.UpsertIdentity("west", westFrontend, podLabels("west", "frontend").With(wire.Label{Source: "k8s", Key: "v", Value: "3"}))
	testenv.WaitFor(t, 5*time.Second, "relabelled peer redirected", func() bool {
		ls, _ := f.e.Identity(westFrontend)
		return strings.Contains(ls.String(), "v=3") && f.hasKey(west) && f.e.Status().RedirectedEntries == 1
	})
	f.e.UpsertIdentity("west", west2, podLabels("west", "frontend"))
	if px.mu.Lock(); px.removes != 0 {
		t.Errorf("the redirect was removed %d times while peers were relabelled", px.removes)
	}
	px.mu.Unlock()
	// The L7 rules go: the entries stay, plain (the redirected key removed).
	f.writePolicy(t, "checkout.yaml", strings.Replace(l7CheckoutPolicy, "      rules:\n        http: [{method: GET, path: \"/v1/.*\"}]\n", "", 1))
	testenv.WaitFor(t, 5*time.Second, "entries plain again", func() bool {
		return f.hasKey(allow(eastCheckout, westFrontend)) && !f.hasKey(west) && f.e.Status().RedirectedEntries == 0
	})
	if _, ok := f.e.L7Policy(eastCheckout, policy.Ingress, policy.TCP, 8080, westFrontend); ok {
		t.Error("L7Policy still answers after the rules went")
	}
	if open := px.redirects(); len(open) != 0 {
		t.Errorf("redirects %v left open after the rules went", open)
	}
	ks, _ := f.dp.Policies()
	if n := f.e.Status().PolicyEntries; n != len(ks) {
		t.Errorf("policy entries %d, map %d: %v", n, len(ks), ks)
	}
}

// Without a listener an L7 entry is not written (its traffic is dropped,
// never let past the proxy); once the listener opens it is.
func TestL7FailsClosedWithoutListener(t *testing.T) {
	px := &fakeProxy{fail: true}
	f := startCfg(t, func(_ *fixture, cfg *Config) { cfg.ProxyPorts = px }, nil)
	f.writePolicy(t, "checkout.yaml", l7CheckoutPolicy)
	f.e.UpsertIdentity("east", eastCheckout, podLabels("east", "checkout"))
	f.e.UpsertIdentity("west", westFrontend, podLabels("west", "frontend"))
	f.e.UpsertIdentity("east", eastFrontend, podLabels("east", "frontend"))
	close(f.ready)
	testenv.WaitFor(t, 5*time.Second, "redirect waiting, error in status", func() bool {
		s := f.e.Status()
		return s.Enforcing && s.RedirectsWaiting == 1 && s.ProxyPortErrors > 0 && strings.Contains(s.LastProxyError, "listener not open")
	})
	ks, _ := f.dp.Policies()
	for _, k := range ks {
		if k.Peer == westFrontend && k.Port == 8080 {
			t.Fatalf("west's 8080 entry written without a listener: %v", k)
		}
	}
	if !f.hasKey(tcpolicy.Key{Endpoint: eastCheckout, Peer: eastFrontend, Direction: datapath.Ingress, Protocol: datapath.TCP, Port: 9090, EndPort: 9090}) {
		t.Error("the plain 9090 entry is missing")
	}
	px.setFail(false)
	testenv.WaitFor(t, 5*time.Second, "written once the listener opened", func() bool {
		return f.hasKey(redirected(allow(eastCheckout, westFrontend), httpIngressPort)) && f.e.Status().RedirectsWaiting == 0
	})
}

const fqdnPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-out, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.example.com"}]
  - toFQDNs: [{matchPattern: "*.example.com"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`

func https(peer uint32) tcpolicy.Key {
	return tcpolicy.Key{Endpoint: eastFrontend, Peer: peer, Direction: datapath.Egress, Protocol: datapath.TCP, Port: 443, EndPort: 443}
}

// fqdnClock is the FQDN cache's clock, moved by the test.
type fqdnClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fqdnClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *fqdnClock) add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// toFQDNs with package fqdn's cache: an address an allowed answer gave for
// a selected name gets a node-local identity, its ipcache entry and the
// endpoint's egress entry; the end of its TTL removes all three; a name no
// policy selects adds nothing; the DNS rule's port goes to the DNS listener.
func TestFQDNAddressesAllowedUntilTheyExpire(t *testing.T) {
	clock := &fqdnClock{now: time.Unix(1_800_000_000, 0)}
	cache, err := fqdn.New(fqdn.Config{MinTTL: 30 * time.Second, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ipc, px := datapath.NewMemory(), &fakeProxy{}
	// A previous run's FQDN address, and a remote pod's entry.
	stale, pod := netip.MustParsePrefix("203.0.113.9/32"), netip.MustParsePrefix("10.2.0.5/32")
	ipc.UpsertIPCache(stale, datapath.IPCacheEntry{Identity: localIdentityFlag + 1})
	ipc.UpsertIPCache(pod, datapath.IPCacheEntry{Identity: 2<<16 + 5, ClusterID: 2})
	f := startCfg(t, func(_ *fixture, cfg *Config) { cfg.FQDN, cfg.IPCache, cfg.ProxyPorts = FQDNCache(cache), ipc, px }, nil)
	www, api := netip.MustParseAddr("93.184.215.14"), netip.MustParseAddr("2001:db8::443")
	cache.Update("www.example.com.", []netip.Addr{www}, 10*time.Second) // before the policy: given on subscribe
	f.writePolicy(t, "frontend.yaml", fqdnPolicy)
	f.e.UpsertIdentity("east", eastFrontend, podLabels("east", "frontend"))
	const dnsID = 1<<16 + 50
	f.e.UpsertIdentity("east", dnsID, (&wireEndpoint{ns: "kube-system", labels: map[string]string{"k8s-app": "kube-dns"}}).identity())
	// Before the agent's first sync: nothing subscribed, no address given
	// an identity (the previous run's pinned entries still enforce).
	testenv.WaitFor(t, 5*time.Second, "policies loaded, identities known", func() bool {
		s := f.e.Status()
		return s.Rules == 2 && s.Identities == 3
	})
	if st := cache.Stats(); st.Subscriptions != 0 || f.e.Status().FQDNAddresses != 0 {
		t.Fatalf("before the sync: %d subscriptions, %d addresses", st.Subscriptions, f.e.Status().FQDNAddresses)
	}
	close(f.ready)
	const first = localIdentityFlag + 1
	testenv.WaitFor(t, 5*time.Second, "the cached address allowed", func() bool { return f.hasKey(https(first)) })
	ipcEntry := func(a netip.Addr) (datapath.IPCacheEntry, bool) {
		m, _ := ipc.IPCache()
		e, ok := m[netip.PrefixFrom(a, a.BitLen())]
		return e, ok
	}
	if e, ok := ipcEntry(www); !ok || e.Identity != first {
		t.Errorf("ipcache of %v: %+v %v, want identity %d", www, e, ok, first)
	}
	if _, ok := ipcEntry(stale.Addr()); ok {
		t.Error("the previous run's FQDN address kept its ipcache entry (and this run's identity)")
	}
	if e, ok := ipcEntry(pod.Addr()); !ok || e.Identity != 2<<16+5 {
		t.Error("the remote pod's ipcache entry was touched")
	}
	if ls, ok := f.e.Identity(first); !ok || !strings.Contains(ls.String(), "fqdn:*.example.com.") {
		t.Errorf("identity %d labels %v", first, ls)
	}
	for _, proto := range []datapath.Protocol{datapath.UDP, datapath.TCP} {
		k := tcpolicy.Key{Endpoint: eastFrontend, Peer: dnsID, Direction: datapath.Egress, Protocol: proto, Port: 53, EndPort: 53, ProxyPort: dnsEgressPort}
		if !f.hasKey(k) {
			t.Errorf("DNS entry %v missing", k)
		}
	}
	// A name no policy selects adds nothing; a second selected one does,
	// for longer.
	cache.Update("cdn.evil.org.", []netip.Addr{netip.MustParseAddr("10.66.6.6")}, time.Hour)
	cache.Update("API.example.com", []netip.Addr{api}, time.Hour)
	testenv.WaitFor(t, 5*time.Second, "a second address", func() bool { return f.hasKey(https(first + 1)) })
	if e, ok := ipcEntry(api); !ok || e.Identity != first+1 {
		t.Errorf("ipcache of %v: %+v %v", api, e, ok)
	}
	if s := f.e.Status(); s.FQDNAddresses != 2 || s.FQDNPatterns != 1 {
		t.Errorf("status: %d addresses, %d patterns", s.FQDNAddresses, s.FQDNPatterns)
	}
	if m, _ := ipc.IPCache(); len(m) != 3 {
		t.Errorf("ipcache %v: want the two example.com addresses and the pod", m)
	}
	// www's TTL (raised to the 30 s minimum) ends.
	cache.Expire(clock.add(31 * time.Second))
	testenv.WaitFor(t, 5*time.Second, "expired address revoked", func() bool {
		_, inIPC := ipcEntry(www)
		return !f.hasKey(https(first)) && !inIPC && f.e.Status().FQDNAddresses == 1
	})
	if _, ok := f.e.Identity(first); ok {
		t.Error("the expired address's identity is still known")
	}
	if !f.hasKey(https(first + 1)) {
		t.Error("the address still in its TTL lost its entry")
	}
	// The policy goes: the subscription is cancelled, the address dropped.
	f.writePolicy(t, "frontend.yaml", checkoutPolicy)
	testenv.WaitFor(t, 5*time.Second, "fqdn policy gone", func() bool {
		m, _ := ipc.IPCache()
		return !f.hasKey(https(first+1)) && len(m) == 1 && f.e.Status().FQDNAddresses == 0 && f.e.Status().FQDNPatterns == 0
	})
	if st := cache.Stats(); st.Subscriptions != 0 {
		t.Errorf("%d subscriptions left in the cache", st.Subscriptions)
	}
}

// wireEndpoint builds the identity labels of a pod of another namespace.
type wireEndpoint struct {
	ns     string
	labels map[string]string
}

func (w *wireEndpoint) identity() wire.Labels {
	return wire.NewLabels("k8s", w.labels).
		With(wire.Label{Source: "k8s", Key: policy.NamespaceLabel, Value: w.ns}).
		With(wire.Label{Source: "k8s", Key: wire.ClusterLabel, Value: "east"})
}

// BenchmarkL7Policy: the proxy's lookup of a connection's L7 policy, with
// 1,000 redirected peers on the endpoint.
func BenchmarkL7Policy(b *testing.B) {
	e, err := New(Config{ClusterName: "east", NodeName: "n", Policy: tcpolicy.NewMemory(), ProxyPorts: &fakeProxy{}})
	if err != nil {
		b.Fatal(err)
	}
	c, err := policy.Parse(e.PolicyOptions(), "b.yaml", []byte(l7CheckoutPolicy))
	if err != nil {
		b.Fatal(err)
	}
	e.engine.SetPolicies(c)
	e.apply(e.engine.UpsertIdentity(eastCheckout, podLabels("east", "checkout")))
	for i := range uint32(1000) {
		e.apply(e.engine.UpsertIdentity(2<<16+100+i, podLabels("west", "frontend").With(wire.Label{Source: "k8s", Key: "n", Value: fmt.Sprint(i)})))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, ok := e.L7Policy(eastCheckout, policy.Ingress, policy.TCP, 8080, 2<<16+100+uint32(i%1000)); !ok {
			b.Fatal("no L7 policy")
		}
	}
}

// Addresses over MaxFQDNAddresses are refused and counted; an expired one
// frees its identity for the next.
func TestFQDNAddressesBounded(t *testing.T) {
	clock := &fqdnClock{now: time.Unix(1_800_000_000, 0)}
	cache, err := fqdn.New(fqdn.Config{MinTTL: time.Second, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ipc := datapath.NewMemory()
	f := startCfg(t, func(_ *fixture, cfg *Config) {
		cfg.FQDN, cfg.IPCache, cfg.ProxyPorts, cfg.MaxFQDNAddresses = FQDNCache(cache), ipc, &fakeProxy{}, 1
	}, nil)
	f.writePolicy(t, "frontend.yaml", fqdnPolicy)
	f.e.UpsertIdentity("east", eastFrontend, podLabels("east", "frontend"))
	close(f.ready)
	testenv.WaitFor(t, 5*time.Second, "subscribed", func() bool { return f.e.Status().FQDNPatterns == 1 })
	cache.Update("a.example.com", []netip.Addr{netip.MustParseAddr("192.0.2.1")}, time.Second)
	cache.Update("b.example.com", []netip.Addr{netip.MustParseAddr("192.0.2.2")}, time.Hour)
	const first = localIdentityFlag + 1
	testenv.WaitFor(t, 5*time.Second, "one allowed, one refused", func() bool {
		s := f.e.Status()
		return f.hasKey(https(first)) && s.FQDNAddresses == 1 && s.FQDNRefused == 1
	})
	if f.hasKey(https(first + 1)) {
		t.Error("an address over the bound was allowed")
	}
	// a's TTL ends: its identity is free; a new answer for c takes it.
	cache.Expire(clock.add(2 * time.Second))
	testenv.WaitFor(t, 5*time.Second, "a expired", func() bool { return !f.hasKey(https(first)) && f.e.Status().FQDNAddresses == 0 })
	c := netip.MustParseAddr("192.0.2.3")
	cache.Update("c.example.com", []netip.Addr{c}, time.Hour)
	testenv.WaitFor(t, 5*time.Second, "c allowed with the freed identity", func() bool {
		m, _ := ipc.IPCache()
		return f.hasKey(https(first)) && m[netip.PrefixFrom(c, 32)].Identity == first
	})
}
