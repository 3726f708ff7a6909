package policy

import (
	"slices"
	"sort"
	"strings"

	"github.com/clustermesh/clustermesh/wire"
)

// AnyPeer in Key.Peer is every peer: any identity, and addresses no cluster
// publishes (world). A rule without peer selectors (only ports, or an empty
// NetworkPolicy peer list) allows it, as Kubernetes and Cilium do.
const AnyPeer uint32 = 0

// Key is one allowed flow of an endpoint: a peer identity, a direction and a
// port range (From 0: every port; protocol 0: every protocol).
type Key struct {
	Peer      uint32
	Direction Direction
	PortRange
}

// EndpointPolicy is what one local endpoint (identity) may do. A direction
// not enforced allows everything; an enforced one allows exactly its keys.
type EndpointPolicy struct {
	Enforced [2]bool // by Direction
	// allowed holds the keys of each direction packed into 64 bits (see
	// pack): this is the hot set of policy computation.
	allowed [2]map[uint64]struct{}
	// l7 is the L7 policy of the allowed keys that have one (their traffic
	// goes through a proxy).
	l7 [2]map[uint64]*L7Policy
}

func newEndpointPolicy() *EndpointPolicy {
	return &EndpointPolicy{allowed: [2]map[uint64]struct{}{{}, {}}, l7: [2]map[uint64]*L7Policy{{}, {}}}
}

// MaxPeerIdentity is the largest peer identity a key holds: cluster-scoped
// identities are below 1<<24, node-local ones (the addresses of FQDN
// selectors) are 1<<24 | n, as Cilium's local scope.
const MaxPeerIdentity = 1<<25 - 1

// protoOf are the protocols of a key by their 2-bit code in pack.
var protoOf = [4]uint8{AnyProtocol, TCP, UDP, SCTP}

func protoCode(p uint8) uint64 {
	switch p {
	case TCP:
		return 1
	case UDP:
		return 2
	case SCTP:
		return 3
	}
	return 0
}

// pack fits a key of a known direction into 64 bits: 25-bit identity,
// 2-bit protocol code, first and last port.
func pack(k Key) uint64 {
	return uint64(k.Peer&MaxPeerIdentity)<<34 | protoCode(k.Protocol)<<32 | uint64(k.From)<<16 | uint64(k.To)
}

func unpack(dir Direction, v uint64) Key {
	return Key{Peer: uint32(v>>34) & MaxPeerIdentity, Direction: dir,
		PortRange: PortRange{Protocol: protoOf[(v>>32)&3], From: uint16(v >> 16), To: uint16(v)}}
}

// Keys lists the allowed entries.
func (p *EndpointPolicy) Keys() []Key {
	var out []Key
	for dir, set := range p.allowed {
		for v := range set {
			out = append(out, unpack(Direction(dir), v))
		}
	}
	return out
}

// L7 returns the L7 policy of an allowed key (nil: plain L3/L4, or not
// allowed).
func (p *EndpointPolicy) L7(k Key) *L7Policy {
	if p == nil {
		return nil
	}
	return p.l7[k.Direction][pack(k)]
}

// L7Keys lists the allowed keys that have an L7 policy.
func (p *EndpointPolicy) L7Keys() []Key {
	var out []Key
	for dir, set := range p.l7 {
		for v := range set {
			out = append(out, unpack(Direction(dir), v))
		}
	}
	return out
}

func (p *EndpointPolicy) has(k Key) bool {
	_, ok := p.allowed[k.Direction][pack(k)]
	return ok
}

// Allows reports whether a flow is allowed.
func (p *EndpointPolicy) Allows(peer uint32, dir Direction, proto uint8, port uint16) bool {
	if p == nil || !p.Enforced[dir] {
		return true
	}
	for v := range p.allowed[dir] {
		k := unpack(dir, v)
		if (k.Peer == peer || k.Peer == AnyPeer) && (k.Protocol == AnyProtocol || k.Protocol == proto) &&
			(k.From == 0 || (port >= k.From && port <= k.To)) {
			return true
		}
	}
	return false
}

// Change is one entry added to or removed from an endpoint's policy. An
// Add of a key already allowed changes its L7 policy.
type Change struct {
	Endpoint uint32
	Key      Key
	Add      bool
	// L7 is the entry's L7 policy when added (nil: plain L3/L4).
	L7 *L7Policy
	// Update: an Add of a key already allowed, whose L7 policy changed.
	Update bool
}

// Engine keeps every endpoint's policy up to date as identities come and go
// (in any cluster) and as the policies change. Not safe for concurrent use:
// its owner serialises calls.
type Engine struct {
	localCluster string
	rules        []compiledRule
	identities   map[uint32]wire.Labels     // every identity known, all clusters
	subjects     []map[uint32]struct{}      // per rule: local identities it applies to
	endpoints    map[uint32]*EndpointPolicy // per local identity
	// hasL7: some rule has L7 rules (otherwise no entry's L7 policy is
	// computed); l7Conflicts counts entries whose rules' parsers differed.
	hasL7       bool
	l7Conflicts uint64
	// l7Merged are the merged L7 policies by the policies merged (equal
	// sets share one value); emptied with the rules.
	l7Merged map[string]*L7Policy
}

// NewEngine returns an engine for the local cluster with no policy.
func NewEngine(localCluster string) *Engine {
	return &Engine{localCluster: localCluster, identities: map[uint32]wire.Labels{}, endpoints: map[uint32]*EndpointPolicy{}}
}

func (e *Engine) isLocal(ls wire.Labels) bool {
	c, _ := lookup(ls, "", wire.ClusterLabel)
	return c == e.localCluster
}

// SetPolicies replaces the policies and recomputes everything; it returns
// the resulting changes.
func (e *Engine) SetPolicies(c *Compiled) []Change {
	old := e.endpoints
	e.rules = c.rules
	e.hasL7 = c.HasL7()
	e.l7Merged = map[string]*L7Policy{}
	e.subjects = make([]map[uint32]struct{}, len(e.rules))
	e.endpoints = map[uint32]*EndpointPolicy{}
	for i, r := range e.rules {
		e.subjects[i] = map[uint32]struct{}{}
		for id, ls := range e.identities {
			if e.isLocal(ls) && r.subject.matches(ls) {
				e.subjects[i][id] = struct{}{}
			}
		}
	}
	for id, ls := range e.identities {
		if e.isLocal(ls) {
			e.endpoints[id] = e.compute(id)
		}
	}
	return diff(old, e.endpoints)
}

// UpsertIdentity adds (or relabels) an identity of any cluster and returns
// the policy entries that change: for a local identity its own policy, and
// for every identity the entries of the endpoints whose rules select it as a
// peer. Only the affected rules and endpoints are visited.
func (e *Engine) UpsertIdentity(id uint32, ls wire.Labels) []Change {
	var changes []Change
	if _, known := e.identities[id]; known {
		changes = e.RemoveIdentity(id)
	}
	e.identities[id] = ls
	if e.isLocal(ls) {
		for i, r := range e.rules {
			if r.subject.matches(ls) {
				e.subjects[i][id] = struct{}{}
			}
		}
		ep := e.compute(id)
		e.endpoints[id] = ep
		changes = append(changes, diff(map[uint32]*EndpointPolicy{}, map[uint32]*EndpointPolicy{id: ep})...)
	}
	own := len(changes)
	for i, r := range e.rules {
		if !r.allowsPeer(ls) {
			continue
		}
		keys := r.keys(id)
		packed := make([]uint64, len(keys))
		for j, k := range keys {
			packed[j] = pack(k)
		}
		changes = slices.Grow(changes, len(e.subjects[i])*len(keys))
		for ep := range e.subjects[i] {
			if ep == id {
				continue // computed above
			}
			allowed := e.endpoints[ep].allowed[r.dir]
			for j, v := range packed {
				if _, ok := allowed[v]; !ok {
					allowed[v] = struct{}{}
					changes = append(changes, Change{Endpoint: ep, Key: keys[j], Add: true})
				}
			}
		}
	}
	if e.hasL7 {
		for i := own; i < len(changes); i++ {
			c := &changes[i]
			if c.L7 = e.l7For(c.Endpoint, c.Key); c.L7 != nil {
				e.endpoints[c.Endpoint].l7[c.Key.Direction][pack(c.Key)] = c.L7
			}
		}
	}
	return changes
}

// RemoveIdentity forgets an identity: entries allowing it go away, and a
// local endpoint's own policy with it.
func (e *Engine) RemoveIdentity(id uint32) []Change {
	ls, ok := e.identities[id]
	if !ok {
		return nil
	}
	delete(e.identities, id)
	var changes []Change
	if ep, ok := e.endpoints[id]; ok {
		changes = append(changes, diff(map[uint32]*EndpointPolicy{id: ep}, map[uint32]*EndpointPolicy{})...)
		delete(e.endpoints, id)
		for i := range e.subjects {
			delete(e.subjects[i], id)
		}
	}
	for i, r := range e.rules {
		if !r.allowsPeer(ls) {
			continue
		}
		keys := r.keys(id)
		for ep := range e.subjects[i] {
			allowed := e.endpoints[ep].allowed[r.dir]
			for _, k := range keys {
				if _, ok := allowed[pack(k)]; ok {
					delete(allowed, pack(k))
					delete(e.endpoints[ep].l7[r.dir], pack(k))
					changes = append(changes, Change{Endpoint: ep, Key: k})
				}
			}
		}
	}
	return changes
}

// Endpoint returns the policy of a local identity (nil: none selects it).
func (e *Engine) Endpoint(id uint32) *EndpointPolicy { return e.endpoints[id] }

// Endpoints lists the local identities with a policy, sorted.
func (e *Engine) Endpoints() []uint32 {
	out := make([]uint32, 0, len(e.endpoints))
	for id := range e.endpoints {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// compute builds the policy of local identity id from scratch.
func (e *Engine) compute(id uint32) *EndpointPolicy {
	ep := newEndpointPolicy()
	for i, r := range e.rules {
		if _, ok := e.subjects[i][id]; !ok {
			continue
		}
		ep.Enforced[r.dir] = true
		if r.anyPeer {
			for _, k := range r.keys(AnyPeer) {
				ep.allowed[r.dir][pack(k)] = struct{}{}
			}
			continue
		}
		for peer, ls := range e.identities {
			if r.allowsPeer(ls) {
				for _, k := range r.keys(peer) {
					ep.allowed[r.dir][pack(k)] = struct{}{}
				}
			}
		}
	}
	if e.hasL7 {
		for dir, set := range ep.allowed {
			for v := range set {
				if p := e.l7For(id, unpack(Direction(dir), v)); p != nil {
					ep.l7[dir][v] = p
				}
			}
		}
	}
	return ep
}

// l7For merges the L7 policies of every rule of local identity ep that
// allows key k: rules that allow its peer (or every peer) on ports covering
// its ports. Nil when none has L7 rules.
func (e *Engine) l7For(ep uint32, k Key) *L7Policy {
	var found []*L7Policy
	plain := false
	for i := range e.rules {
		r := &e.rules[i]
		if r.dir != k.Direction {
			continue
		}
		if _, ok := e.subjects[i][ep]; !ok {
			continue
		}
		if !r.anyPeer && (k.Peer == AnyPeer || !r.allowsPeer(e.identities[k.Peer])) {
			continue
		}
		if len(r.ports) == 0 {
			plain = true
			continue
		}
		for j, p := range r.ports {
			if !covers(p, k.PortRange) {
				continue
			}
			if r.l7 == nil || r.l7[j] == nil {
				plain = true
			} else {
				found = append(found, r.l7[j])
			}
		}
	}
	switch {
	case len(found) == 0:
		return nil
	case len(found) == 1 && !plain:
		return found[0]
	}
	var b strings.Builder
	for _, p := range found {
		b.WriteString(p.key)
		b.WriteByte('|')
	}
	if plain {
		b.WriteString("plain")
	}
	if p, ok := e.l7Merged[b.String()]; ok {
		return p
	}
	p, conflict := mergeL7(found, plain)
	if conflict {
		e.l7Conflicts++
	}
	e.l7Merged[b.String()] = p
	return p
}

// L7Conflicts counts the entries whose rules had different L7 parsers (the
// first rule's was kept); CheckL7Conflicts refuses such sets beforehand.
func (e *Engine) L7Conflicts() uint64 { return e.l7Conflicts }

// allowsPeer reports whether the rule allows the identity with labels ls by
// its peer selectors. A rule for every peer (anyPeer) allows none by name:
// its entries are for AnyPeer, every address known or not, and do not
// change as identities come and go.
func (r *compiledRule) allowsPeer(ls wire.Labels) bool {
	if r.anyPeer {
		return false
	}
	for _, p := range r.peers {
		if p.matches(ls) {
			return true
		}
	}
	return false
}

// keys are the entries a rule allows for one peer.
func (r *compiledRule) keys(peer uint32) []Key {
	if len(r.ports) == 0 {
		return []Key{{Peer: peer, Direction: r.dir}}
	}
	out := make([]Key, len(r.ports))
	for i, p := range r.ports {
		out[i] = Key{Peer: peer, Direction: r.dir, PortRange: p}
	}
	return out
}

// diff lists the entries that differ between two sets of endpoint policies.
func diff(old, cur map[uint32]*EndpointPolicy) []Change {
	var out []Change
	for id, o := range old {
		for _, k := range o.Keys() {
			if c, ok := cur[id]; !ok || !c.has(k) {
				out = append(out, Change{Endpoint: id, Key: k})
			}
		}
	}
	for id, c := range cur {
		for _, k := range c.Keys() {
			o, ok := old[id]
			had := ok && o.has(k)
			if !had || !o.L7(k).Equal(c.L7(k)) {
				out = append(out, Change{Endpoint: id, Key: k, Add: true, L7: c.L7(k), Update: had})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Endpoint < out[j].Endpoint })
	return out
}
