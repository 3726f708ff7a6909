package enforcer

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/policy"
)

// redirects are the policy entries with L7 rules: their L7 policy and the
// proxy port they are written with, the table the proxy asks (L7Policy),
// and the proxy's redirects they use (one listener per local endpoint
// identity, first port, direction and parser, as l7proxy keys them).
// Written by Run's goroutine, read by the proxy's.
type redirects struct {
	mu      sync.RWMutex
	entries map[redirectKey]redirect // guarded by mu
	byPeer  map[peerKey][]policy.Key // guarded by mu: the keys of entries, for lookups

	// Owned by Run's goroutine.
	listeners map[Redirect]*listener
	idle      []Redirect // released in the current batch
	failed    int        // entries without a proxy port (not written)
	errors    uint64     // failed Ensure calls
	lastErr   string
	summary   map[uint32][]RedirectStatus // by endpoint identity; nil: stale (guarded by mu)
}

type redirectKey struct {
	ep uint32
	k  policy.Key
}

type peerKey struct {
	ep   uint32
	dir  policy.Direction
	peer uint32
}

// listener is one of the proxy's redirects: its port (0: Ensure failed,
// asked again) and the entries using it.
type listener struct {
	port  uint16
	refs  int
	rules *PortRules
}

// redirect is one entry's L7 policy, its proxy redirect and the proxy port
// it was written with (0: not written).
type redirect struct {
	l7   *policy.L7Policy
	r    Redirect
	port uint16
}

func newRedirects() redirects {
	return redirects{entries: map[redirectKey]redirect{}, byPeer: map[peerKey][]policy.Key{}, listeners: map[Redirect]*listener{}}
}

// PortRules are the L7 policies of the peers of one redirect, read live:
// what the proxy's engines judge a connection or datagram with.
type PortRules struct {
	e *Enforcer
	r Redirect
}

// For returns the L7 policy of a connection of the redirect: the peer's
// identity, the protocol and the destination port (see Enforcer.L7Policy).
// ok false: refuse it.
func (p *PortRules) For(peer uint32, proto uint8, port uint16) (*policy.L7Policy, bool) {
	dir := policy.Egress
	if p.r.Ingress {
		dir = policy.Ingress
	}
	return p.e.L7Policy(p.r.Endpoint, dir, proto, port, peer)
}

// Redirect is the redirect it answers for.
func (p *PortRules) Redirect() Redirect { return p.r }

// RedirectStatus is one kind of redirected entry of an endpoint.
type RedirectStatus struct {
	Direction string `json:"direction"`
	Protocol  string `json:"protocol"`
	Ports     string `json:"ports"`
	Parser    string `json:"parser"`
	// ProxyPort is the listener the traffic goes to; 0: none yet (the
	// traffic is dropped, fail closed).
	ProxyPort uint16 `json:"proxyPort"`
	// Peers is the number of peer identities redirected (the any-peer
	// entry counts one).
	Peers int `json:"peers"`
}

// L7Policy returns the L7 policy the proxy holds a connection to: of local
// endpoint identity endpoint, in direction dir, with the peer identity,
// protocol and destination port (the endpoint's for ingress, the peer's
// for egress). The entry for the peer is taken before the any-peer one,
// the narrowest port range first, as the datapath picks. ok false: no
// entry redirects such traffic (the proxy must refuse it). Safe for
// concurrent use; the policy returned is never modified.
func (e *Enforcer) L7Policy(endpoint uint32, dir policy.Direction, proto uint8, port uint16, peer uint32) (*policy.L7Policy, bool) {
	r := &e.redir
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, p := range []uint32{peer, policy.AnyPeer} {
		keys := r.byPeer[peerKey{endpoint, dir, p}]
		best := -1
		for i, k := range keys {
			if k.Protocol != policy.AnyProtocol && k.Protocol != proto || port < k.From || port > k.To {
				continue
			}
			if best < 0 || k.To-k.From < keys[best].To-keys[best].From {
				best = i
			}
		}
		if best >= 0 {
			return r.entries[redirectKey{endpoint, keys[best]}].l7, true
		}
		if p == policy.AnyPeer {
			break
		}
	}
	return nil, false
}

// setEntry records (l7 true) or forgets an entry's redirect.
func (r *redirects) setEntry(rk redirectKey, red redirect, l7 bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.summary = nil
	old, had := r.entries[rk]
	if had && old.port == 0 {
		r.failed--
	}
	pk := peerKey{rk.ep, rk.k.Direction, rk.k.Peer}
	if !l7 {
		if had {
			delete(r.entries, rk)
			r.byPeer[pk] = slices.DeleteFunc(r.byPeer[pk], func(k policy.Key) bool { return k == rk.k })
			if len(r.byPeer[pk]) == 0 {
				delete(r.byPeer, pk)
			}
		}
		return
	}
	if red.port == 0 {
		r.failed++
	}
	r.entries[rk] = red
	if !had {
		r.byPeer[pk] = append(r.byPeer[pk], rk.k)
	}
}

// getEntry returns an entry's redirect. Run's goroutine only: it is the
// one writer, so its reads need no lock.
func (r *redirects) getEntry(rk redirectKey) (redirect, bool) {
	red, ok := r.entries[rk]
	return red, ok
}

// redirectOf is the proxy redirect an L7 entry of endpoint ep uses.
func redirectOf(ep uint32, k policy.Key, p *policy.L7Policy) Redirect {
	return Redirect{Endpoint: ep, Port: k.From, Ingress: k.Direction == policy.Ingress, Parser: p.Parser.String()}
}

// acquire takes a reference on the proxy redirect r (opening it the first
// time) and returns its port; 0 when it has none (no proxy, or Ensure
// failed: counted, and asked again by a full sync).
func (e *Enforcer) acquire(r Redirect) uint16 {
	l := e.redir.listeners[r]
	if l == nil {
		l = &listener{rules: &PortRules{e: e, r: r}}
		e.redir.listeners[r] = l
	}
	l.refs++
	return e.ensure(r, l)
}

// ensure asks the proxy for r's port when it has none yet.
func (e *Enforcer) ensure(r Redirect, l *listener) uint16 {
	if l.port != 0 {
		return l.port
	}
	rd := &e.redir
	if e.cfg.ProxyPorts == nil {
		rd.lastErr = "no L7 proxy: entries with L7 rules are not written (their traffic is dropped)"
		return 0
	}
	port, err := e.cfg.ProxyPorts.Ensure(r, l.rules)
	if err == nil && port == 0 {
		err = fmt.Errorf("port 0")
	}
	if err != nil {
		rd.errors++
		rd.lastErr = fmt.Sprintf("L7 proxy redirect %v: %v", r, err)
		if ok, suppressed := e.loglim.Allow("proxy "+r.Parser, time.Now()); ok {
			e.log.Error("no L7 proxy port: entries with L7 rules are not written (their traffic is dropped) until it opens",
				"redirect", r, "err", err, "suppressed", suppressed)
		}
		return 0
	}
	l.port = port
	return port
}

// release drops a reference on r; closeIdle removes it if that was the
// last one (after a batch: a peer relabelled within it keeps its listener
// and connections).
func (e *Enforcer) release(r Redirect) {
	if l := e.redir.listeners[r]; l != nil {
		l.refs--
		e.redir.idle = append(e.redir.idle, r)
	}
}

// closeIdle removes the redirects no entry uses any more.
func (e *Enforcer) closeIdle() {
	for _, r := range e.redir.idle {
		l := e.redir.listeners[r]
		if l == nil || l.refs > 0 {
			continue
		}
		delete(e.redir.listeners, r)
		if l.port != 0 && e.cfg.ProxyPorts != nil {
			e.cfg.ProxyPorts.Remove(r)
		}
	}
	e.redir.idle = e.redir.idle[:0]
}

// redirectChanges appends the datapath changes of one engine change to dc
// and records its redirect. An entry with L7 rules is written with its
// redirect's proxy port, or not at all while there is none (fail closed).
// A key whose proxy port changes is a new key: the new one is added before
// the old one goes.
func (e *Enforcer) redirectChanges(dc []tcpolicy.Change, c policy.Change) []tcpolicy.Change {
	rk := redirectKey{c.Endpoint, c.Key}
	base := toDatapathKey(c.Endpoint, c.Key)
	old, had := e.redir.getEntry(rk)
	if !had && c.L7 == nil {
		return append(dc, tcpolicy.Change{Key: base, Add: c.Add}) // plain, as it was
	}
	var red redirect
	if c.Add && c.L7 != nil {
		red = redirect{l7: c.L7, r: redirectOf(c.Endpoint, c.Key, c.L7)}
		red.port = e.acquire(red.r)
	}
	if had {
		e.release(old.r)
	}
	e.redir.setEntry(rk, red, c.Add && c.L7 != nil)
	if !c.Add {
		if had && old.port == 0 {
			return dc // never written
		}
		return append(dc, tcpolicy.Change{Key: withProxyPort(base, old.port)})
	}
	if c.L7 == nil || red.port != 0 {
		dc = append(dc, tcpolicy.Change{Key: withProxyPort(base, red.port), Add: true})
	}
	switch {
	case had && old.port != red.port && old.port != 0:
		dc = append(dc, tcpolicy.Change{Key: withProxyPort(base, old.port)})
	case !had && c.Update:
		// The key was written plain before its L7 rules came.
		dc = append(dc, tcpolicy.Change{Key: base})
	}
	return dc
}

// datapathKey is the key a full sync writes for an engine key: with its
// redirect's proxy port (a redirect that failed before is asked again);
// ok false: not written (no proxy port).
func (e *Enforcer) datapathKey(ep uint32, k policy.Key) (tcpolicy.Key, bool) {
	base := toDatapathKey(ep, k)
	rk := redirectKey{ep, k}
	red, ok := e.redir.getEntry(rk)
	if !ok {
		return base, true
	}
	if red.port == 0 {
		l := e.redir.listeners[red.r]
		if l == nil {
			return base, false
		}
		if red.port = e.ensure(red.r, l); red.port == 0 {
			return base, false
		}
		e.redir.setEntry(rk, red, true)
	}
	return withProxyPort(base, red.port), true
}

// redirectSummary returns the redirects of every endpoint identity,
// recomputed after a change.
func (e *Enforcer) redirectSummary() map[uint32][]RedirectStatus {
	r := &e.redir
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.summary != nil {
		return r.summary
	}
	type group struct {
		ep uint32
		RedirectStatus
	}
	counts := map[group]int{}
	for rk, red := range r.entries {
		g := group{rk.ep, RedirectStatus{Direction: rk.k.Direction.String(), Protocol: protoName(rk.k.Protocol),
			Ports: portsString(rk.k.PortRange), Parser: red.l7.Parser.String(), ProxyPort: red.port}}
		counts[g]++
	}
	r.summary = map[uint32][]RedirectStatus{}
	for g, n := range counts {
		g.Peers = n
		r.summary[g.ep] = append(r.summary[g.ep], g.RedirectStatus)
	}
	for _, s := range r.summary {
		slices.SortFunc(s, func(a, b RedirectStatus) int {
			return cmp.Or(cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Ports, b.Ports), cmp.Compare(a.Protocol, b.Protocol),
				cmp.Compare(a.ProxyPort, b.ProxyPort))
		})
	}
	return r.summary
}

func protoName(p uint8) string {
	switch p {
	case policy.TCP:
		return "TCP"
	case policy.UDP:
		return "UDP"
	case policy.SCTP:
		return "SCTP"
	}
	return "ANY"
}

func portsString(r policy.PortRange) string {
	if r.From == r.To {
		return fmt.Sprint(r.From)
	}
	return fmt.Sprintf("%d-%d", r.From, r.To)
}
