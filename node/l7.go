package node

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/fqdn"
	"github.com/clustermesh/clustermesh/l7dns"
	"github.com/clustermesh/clustermesh/l7http"
	"github.com/clustermesh/clustermesh/l7proxy"
	"github.com/clustermesh/clustermesh/policy"
)

// L7Config is the node's L7 proxy: the ports whose policy has L7 rules
// (http, dns) are redirected by the policy programs to a transparent proxy
// in the agent (l7proxy), which hands each connection or datagram to its
// parser's engine (l7http, l7dns); allowed DNS answers feed the FQDN cache
// that toFQDNs rules select from (fqdn). Everything else stays in the
// kernel (docs/l7.md).
type L7Config struct {
	// Enable runs the proxy where policy is enforced on the eBPF datapath
	// (--enable-l7-proxy, true in NewConfig). Without it a policy with L7
	// rules still redirects, and the redirected ports drop (fail closed).
	Enable bool
	// Proxy: listener ports and limits (--l7-proxy-port-min, ...).
	Proxy l7proxy.Config
	// HTTP and DNS are the engines' limits (--l7-http-*, --l7-dns-*);
	// their flows go to the node's Hubble.
	HTTP l7http.Config
	DNS  l7dns.Config
	// FQDN is the cache of the names allowed DNS answers gave (--fqdn-*).
	FQDN fqdn.Config
}

// l7 is the node's running L7 side: the engines, the proxy, the FQDN
// cache, and the compiled rules of the policies the proxy asks for.
type l7 struct {
	proxy *l7proxy.Proxy
	http  *l7http.Proxy
	dns   *l7dns.Proxy
	cache *fqdn.Cache
	rules ruleCache
	log   *slog.Logger
	// refused counts connections and datagrams whose peer the policy no
	// longer lets through the redirect (it changed meanwhile).
	refused atomic.Uint64
}

// newL7Config is L7Config's defaults: on, the packages' own limits.
func newL7Config() L7Config {
	c := L7Config{Enable: true}
	c.Proxy.PortMin, c.Proxy.PortMax = l7proxy.DefaultPortMin, l7proxy.DefaultPortMax
	c.Proxy.MaxConnections, c.Proxy.StopGrace = l7proxy.DefaultMaxConnections, l7proxy.DefaultStopGrace
	c.HTTP.MaxHeaderBytes, c.HTTP.IdleTimeout = l7http.DefaultMaxHeaderBytes, l7http.DefaultIdleTimeout
	c.HTTP.HeaderTimeout, c.HTTP.ResponseTimeout = l7http.DefaultHeaderTimeout, l7http.DefaultResponseTimeout
	c.DNS.MaxConcurrent, c.DNS.QueryTimeout = l7dns.DefaultMaxConcurrent, l7dns.DefaultQueryTimeout
	c.FQDN.MinTTL, c.FQDN.MaxIPsPerName, c.FQDN.MaxNames = fqdn.DefaultMinTTL, fqdn.DefaultMaxIPsPerName, fqdn.DefaultMaxNames
	return c
}

// registerFlags registers the L7 flags, bound to c.
func (c *L7Config) registerFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&c.Enable, "enable-l7-proxy", c.Enable, "run the transparent L7 proxy for the ports whose policy has http or dns rules "+
		"(without it those ports drop: L7 policy fails closed); needs policy on the eBPF datapath")
	c.Proxy.RegisterFlags(fs)
	fs.IntVar(&c.HTTP.MaxHeaderBytes, "l7-http-max-header-bytes", c.HTTP.MaxHeaderBytes, "largest request or response header section the HTTP proxy accepts (larger: 400, counted)")
	fs.DurationVar(&c.HTTP.IdleTimeout, "l7-http-idle-timeout", c.HTTP.IdleTimeout, "a kept-alive HTTP connection without a request for this long is closed")
	fs.DurationVar(&c.HTTP.HeaderTimeout, "l7-http-header-timeout", c.HTTP.HeaderTimeout, "longest a client may take to send a request's headers (slow clients get 408)")
	fs.DurationVar(&c.HTTP.ResponseTimeout, "l7-http-response-timeout", c.HTTP.ResponseTimeout, "longest a server may take to answer a request (then 504)")
	fs.BoolVar(&c.HTTP.KeepHeaderValues, "l7-http-keep-header-values", c.HTTP.KeepHeaderValues, "show HTTP header values in flows (default: redacted, names kept)")
	fs.IntVar(&c.DNS.MaxConcurrent, "l7-dns-max-concurrent", c.DNS.MaxConcurrent, "DNS queries the proxy serves at once (more get SERVFAIL)")
	fs.DurationVar(&c.DNS.QueryTimeout, "l7-dns-query-timeout", c.DNS.QueryTimeout, "longest the DNS proxy waits for the server's answer (then SERVFAIL)")
	fs.DurationVar(&c.FQDN.MinTTL, "fqdn-min-ttl", c.FQDN.MinTTL, "shortest time an address an allowed DNS answer gave stays allowed by toFQDNs rules")
	fs.IntVar(&c.FQDN.MaxIPsPerName, "fqdn-max-ips-per-name", c.FQDN.MaxIPsPerName, "most addresses kept for one DNS name (the ones expiring first are evicted)")
	fs.IntVar(&c.FQDN.MaxNames, "fqdn-max-names", c.FQDN.MaxNames, "most DNS names kept (the least recently answered are evicted)")
}

// buildL7 makes the L7 side when it runs, and gives its proxy and FQDN
// cache to the enforcer's config.
func (n *Node) buildL7(ecfg *enforcer.Config) error {
	if !n.cfg.L7.Enable {
		n.log.Info("L7 proxy off (--enable-l7-proxy=false): ports with L7 policy rules drop their traffic")
		return nil
	}
	x, err := n.newL7(&n.l7Metrics)
	if err != nil {
		return err
	}
	n.l7 = x
	ecfg.ProxyPorts, ecfg.FQDN, ecfg.IPCache = enforcer.L7Proxy(x.proxy), enforcer.FQDNCache(x.cache), n.dp
	return nil
}

// newL7 builds the L7 side: its peers' identities from the node's
// ipcache, its flows to the node's Hubble (built after it, before Run).
func (n *Node) newL7(reg prometheus.Registerer) (*l7, error) {
	c := n.cfg.L7
	x := &l7{log: n.log.With("part", "l7"), rules: ruleCache{http: map[string]*l7http.Policy{}, dns: map[string]*l7dns.Rules{}}}
	var publish func(*flowpb.Flow)
	if n.cfg.Hubble.Enable {
		publish = func(f *flowpb.Flow) {
			if n.hub != nil {
				n.hub.PublishL7(f)
			}
		}
	}
	var err error
	fc := c.FQDN
	fc.Logger, fc.Registerer = x.log, reg
	if x.cache, err = fqdn.New(fc); err != nil {
		return nil, fmt.Errorf("configuring the FQDN cache: %w", err)
	}
	hc := c.HTTP
	hc.OnFlow, hc.Logger, hc.Registerer = publish, x.log, reg
	if x.http, err = l7http.New(hc); err != nil {
		return nil, fmt.Errorf("configuring the HTTP proxy: %w", err)
	}
	dc := c.DNS
	dc.Flows, dc.Cache, dc.Logger, dc.Registerer = publish, x.cache, x.log, reg
	if x.dns, err = l7dns.New(dc); err != nil {
		return nil, fmt.Errorf("configuring the DNS proxy: %w", err)
	}
	pc := c.Proxy
	pc.Handlers = map[string]l7proxy.Handler{"http": httpHandler{x}, "dns": dnsHandler{x}}
	pc.Identities = ipcacheIdentities{n.dp}
	pc.InNetns, pc.Log, pc.Registerer = n.cfg.Policy.InNetns, x.log, reg
	if x.proxy, err = l7proxy.New(pc); err != nil {
		return nil, fmt.Errorf("starting the L7 proxy: %w", err)
	}
	return x, nil
}

// run expires the FQDN cache's addresses until ctx is done, then stops
// the proxy (its handlers return, their connections close).
func (x *l7) run(ctx context.Context) error {
	err := x.cache.Run(ctx)
	if cerr := x.proxy.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("stopping the L7 proxy: %w", cerr)
	}
	return err
}

// ipcacheIdentities are the peers' identities as the policy programs see
// them: the longest prefix of the mesh's ipcache, world without one.
type ipcacheIdentities struct{ dp datapath.Reader }

func (i ipcacheIdentities) IdentityOf(a netip.Addr) uint32 {
	if e, ok := i.dp.LookupIPCache(a); ok {
		return e.Identity
	}
	return datapath.IdentityWorld
}

// peerPolicy is the L7 policy the enforcer gives the connection's peer
// (the client on ingress, the server on egress) on its destination port;
// false when none lets it through any more (refused, counted).
func (x *l7) peerPolicy(md l7proxy.Metadata, proto uint8) (*policy.L7Policy, bool) {
	pr, ok := md.Rules.(*enforcer.PortRules)
	if !ok {
		x.refused.Add(1)
		return nil, false
	}
	peer := md.DstIdentity
	if md.Direction == datapath.Ingress {
		peer = md.SrcIdentity
	}
	p, ok := pr.For(peer, proto, md.OrigDst.Port())
	if !ok {
		x.refused.Add(1)
	}
	return p, ok
}

// httpHandler serves redirected HTTP connections with l7http.
type httpHandler struct{ x *l7 }

func (h httpHandler) ServeConn(ctx context.Context, conn net.Conn, md l7proxy.Metadata) {
	p, ok := h.x.peerPolicy(md, policy.TCP)
	if !ok {
		conn.Close()
		return
	}
	pol, err := h.x.rules.httpPolicy(p)
	if err != nil {
		h.x.log.Error("an HTTP policy does not compile: the connection is refused", "policy", p.String(), "err", err)
		conn.Close()
		return
	}
	meta := l7http.Meta{Source: md.OrigSrc, Destination: md.OrigDst, SourceIdentity: md.SrcIdentity,
		DestinationIdentity: md.DstIdentity, EndpointID: md.EndpointID, Direction: l7http.Egress, Policy: pol}
	if md.Direction == datapath.Ingress {
		meta.Direction = l7http.Ingress
	}
	h.x.http.Serve(ctx, conn, meta, md.DialUpstream)
}

// dnsHandler serves redirected DNS queries (TCP and UDP) with l7dns.
type dnsHandler struct{ x *l7 }

func (h dnsHandler) meta(md l7proxy.Metadata, proto uint8) (l7dns.Meta, bool) {
	p, ok := h.x.peerPolicy(md, proto)
	if !ok {
		return l7dns.Meta{}, false
	}
	rules, err := h.x.rules.dnsRules(p)
	if err != nil {
		h.x.log.Error("a DNS policy does not compile: the query is refused", "policy", p.String(), "err", err)
		return l7dns.Meta{}, false
	}
	m := l7dns.Meta{Source: md.OrigSrc, Destination: md.OrigDst, SourceIdentity: md.SrcIdentity,
		DestinationIdentity: md.DstIdentity, EndpointID: md.EndpointID, Direction: flowpb.TrafficDirection_EGRESS,
		Rules: rules, Dial: md.DialUpstream}
	if md.Direction == datapath.Ingress {
		m.Direction = flowpb.TrafficDirection_INGRESS
	}
	return m, true
}

func (h dnsHandler) ServeConn(ctx context.Context, conn net.Conn, md l7proxy.Metadata) {
	m, ok := h.meta(md, policy.TCP)
	if !ok {
		conn.Close()
		return
	}
	h.x.dns.ServeTCP(ctx, m, conn)
}

func (h dnsHandler) ServeDatagram(ctx context.Context, d l7proxy.Datagram) {
	m, ok := h.meta(d.Meta, policy.UDP)
	if !ok {
		return
	}
	h.x.dns.ServeUDP(ctx, m, d.Payload, d.Reply)
}

// ruleCache holds the engines' compiled form of each L7 policy the
// proxy was asked for, by its canonical form: a policy's regular
// expressions are compiled once, not per connection. Bounded: it starts
// over when full.
type ruleCache struct {
	mu   sync.Mutex
	http map[string]*l7http.Policy // guarded by mu
	dns  map[string]*l7dns.Rules   // guarded by mu
}

// maxCachedPolicies bounds each map of ruleCache.
const maxCachedPolicies = 4096

func (c *ruleCache) httpPolicy(p *policy.L7Policy) (*l7http.Policy, error) {
	key := p.String()
	c.mu.Lock()
	defer c.mu.Unlock()
	if pol, ok := c.http[key]; ok {
		return pol, nil
	}
	rules := make([]l7http.PortRuleHTTP, len(p.HTTP))
	for i, r := range p.HTTP {
		rules[i] = l7http.PortRuleHTTP{Path: r.Path, Method: r.Method, Host: r.Host, Headers: r.Headers}
		for _, m := range r.HeaderMatches {
			rules[i].HeaderMatches = append(rules[i].HeaderMatches, &l7http.HeaderMatch{Mismatch: m.Mismatch, Name: m.Name, Value: m.Value})
		}
	}
	pol, err := l7http.NewPolicy(rules)
	if err != nil {
		return nil, err
	}
	if len(c.http) >= maxCachedPolicies {
		clear(c.http)
	}
	c.http[key] = pol
	return pol, nil
}

func (c *ruleCache) dnsRules(p *policy.L7Policy) (*l7dns.Rules, error) {
	key := p.String()
	c.mu.Lock()
	defer c.mu.Unlock()
	if r, ok := c.dns[key]; ok {
		return r, nil
	}
	rules := make([]l7dns.PortRuleDNS, len(p.DNS))
	for i, r := range p.DNS {
		rules[i] = l7dns.PortRuleDNS{MatchName: r.MatchName, MatchPattern: r.MatchPattern}
	}
	compiled, err := l7dns.CompileRules(rules)
	if err != nil {
		return nil, err
	}
	if len(c.dns) >= maxCachedPolicies {
		clear(c.dns)
	}
	c.dns[key] = compiled
	return compiled, nil
}
