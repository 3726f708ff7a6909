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
// proxy port they are written with, the table the proxy asks (L7Policy).
// Written by Run's goroutine, read by the proxy's.
type redirects struct {
	mu      sync.RWMutex
	entries map[redirectKey]redirect // guarded by mu
	byPeer  map[peerKey][]policy.Key // guarded by mu: the keys of entries, for lookups

	// Owned by Run's goroutine.
	ports   map[listener]uint16 // the listeners' ports, once known
	failed  int                 // entries without a port (not written)
	errors  uint64              // failed ProxyPort calls
	lastErr string
	summary map[uint32][]RedirectStatus // by endpoint identity; nil: stale
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

type listener struct {
	parser policy.L7Parser
	dir    policy.Direction
}

// redirect is one entry's L7 policy and proxy port (0: the listener's port
// is not known: the entry is not written).
type redirect struct {
	l7   *policy.L7Policy
	port uint16
}

func newRedirects() redirects {
	return redirects{entries: map[redirectKey]redirect{}, byPeer: map[peerKey][]policy.Key{}, ports: map[listener]uint16{}}
}

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
		var best *policy.Key
		for i, k := range r.byPeer[peerKey{endpoint, dir, p}] {
			if k.Protocol != policy.AnyProtocol && k.Protocol != proto || port < k.From || port > k.To {
				continue
			}
			if best == nil || k.To-k.From < best.To-best.From {
				best = &r.byPeer[peerKey{endpoint, dir, p}][i]
			}
		}
		if best != nil {
			return r.entries[redirectKey{endpoint, *best}].l7, true
		}
		if p == policy.AnyPeer {
			break
		}
	}
	return nil, false
}

// set records (or, with nil l7, forgets) an entry's redirect.
func (r *redirects) set(rk redirectKey, red redirect, l7 bool) {
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

// get returns an entry's redirect.
func (r *redirects) get(rk redirectKey) (redirect, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	red, ok := r.entries[rk]
	return red, ok
}

// proxyPort returns the listener port of an L7 policy's parser in a
// direction, asking Config.ProxyPorts the first time; 0 when there is
// none (no allocator, or it failed: counted, and retried by a full sync).
func (e *Enforcer) proxyPort(p *policy.L7Policy, dir policy.Direction) uint16 {
	r := &e.redir
	l := listener{p.Parser, dir}
	if port, ok := r.ports[l]; ok {
		return port
	}
	if e.cfg.ProxyPorts == nil {
		r.lastErr = "no L7 proxy: entries with L7 rules are not written (their traffic is dropped)"
		return 0
	}
	port, err := e.cfg.ProxyPorts.ProxyPort(p.Parser.String(), dir == policy.Ingress)
	if err == nil && port == 0 {
		err = fmt.Errorf("port 0")
	}
	if err != nil {
		r.errors++
		r.lastErr = fmt.Sprintf("L7 proxy port for %s %s: %v", p.Parser, dir, err)
		if ok, suppressed := e.loglim.Allow("proxy "+l.parser.String()+" "+l.dir.String(), time.Now()); ok {
			e.log.Error("no L7 proxy port: entries with L7 rules are not written (their traffic is dropped) until it opens",
				"parser", p.Parser, "direction", dir, "err", err, "suppressed", suppressed)
		}
		return 0
	}
	r.ports[l] = port
	return port
}

// redirectChanges appends the datapath changes of one engine change to dc
// and records its redirect. An entry with L7 rules is written with its
// listener's proxy port, or not at all while there is none (fail closed).
// A key whose proxy port changes is a new key: the new one is added before
// the old one goes.
func (e *Enforcer) redirectChanges(dc []tcpolicy.Change, c policy.Change) []tcpolicy.Change {
	rk := redirectKey{c.Endpoint, c.Key}
	base := toDatapathKey(c.Endpoint, c.Key)
	old, had := e.redir.get(rk)
	if !c.Add {
		e.redir.set(rk, redirect{}, false)
		if had && old.port == 0 {
			return dc // never written
		}
		return append(dc, tcpolicy.Change{Key: withProxyPort(base, old.port)})
	}
	var port uint16
	if c.L7 != nil {
		port = e.proxyPort(c.L7, c.Key.Direction)
	}
	e.redir.set(rk, redirect{l7: c.L7, port: port}, c.L7 != nil)
	if c.L7 == nil || port != 0 {
		dc = append(dc, tcpolicy.Change{Key: withProxyPort(base, port), Add: true})
	}
	switch {
	case had && old.port != port && old.port != 0:
		dc = append(dc, tcpolicy.Change{Key: withProxyPort(base, old.port)})
	case !had && c.Update:
		// The key was written plain before its L7 rules came.
		dc = append(dc, tcpolicy.Change{Key: base})
	}
	return dc
}

// datapathKey is the key a full sync writes for an engine key: with its
// redirect's proxy port (a listener that failed before is asked again);
// ok false: not written (no listener).
func (e *Enforcer) datapathKey(ep uint32, k policy.Key) (tcpolicy.Key, bool) {
	base := toDatapathKey(ep, k)
	rk := redirectKey{ep, k}
	red, ok := e.redir.get(rk)
	if !ok {
		return base, true
	}
	if red.port == 0 {
		if red.port = e.proxyPort(red.l7, k.Direction); red.port == 0 {
			return base, false
		}
		e.redir.set(rk, red, true)
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
			return cmp.Or(cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Ports, b.Ports), cmp.Compare(a.Protocol, b.Protocol))
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
