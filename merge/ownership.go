package merge

import (
	"net/netip"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/wire"
)

// Address ownership. A remote cluster may only describe addresses it owns:
// the pod CIDRs and addresses of its own nodes, as its node entries state
// them. An ipcache entry or a service backend outside every range of its
// cluster never reaches the datapath (it is held, and shown in status), so
// that a peer cannot take over another cluster's pods by publishing their
// addresses, nor point a service at addresses no node of it has.
//
// Two clusters whose ranges overlap do not fight over the overlap: the
// range claimed first owns it (claims are numbered in the order the agent
// accepted them) and keeps it until its node goes; the other cluster's
// entries there are held. Ranges only added never take anything from an
// earlier claim, so an accepted entry changes hands only when the range
// that owned it is removed.

// rangeClaim is one cluster's claim on an address range, with the order in
// which it was made.
type rangeClaim struct {
	cluster uint16
	seq     uint64
}

// ownership indexes every remote cluster's node ranges.
type ownership struct {
	// claims holds, per range, the clusters claiming exactly that range.
	claims map[netip.Prefix][]rangeClaim
	// lens counts the ranges of each prefix length, per family (index 0:
	// IPv4, 1: IPv6), so that lookups try only lengths in use.
	lens [2][129]int
	// refs counts, per cluster and range, the nodes that state it.
	refs map[uint16]map[netip.Prefix]int
	seq  uint64
}

func newOwnership() *ownership {
	return &ownership{claims: map[netip.Prefix][]rangeClaim{}, refs: map[uint16]map[netip.Prefix]int{}}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// covering returns the earliest claim on a range that covers all of p.
func (o *ownership) covering(p netip.Prefix) (rangeClaim, bool) {
	fam := family(p.Addr())
	var best rangeClaim
	found := false
	for bits := 0; bits <= p.Bits(); bits++ {
		if o.lens[fam][bits] == 0 {
			continue
		}
		q, _ := p.Addr().Prefix(bits)
		for _, c := range o.claims[q] {
			if !found || c.seq < best.seq {
				best, found = c, true
			}
		}
	}
	return best, found
}

// owner returns the cluster whose earliest range covers p.
func (o *ownership) owner(p netip.Prefix) (uint16, bool) {
	c, ok := o.covering(p)
	return c.cluster, ok
}

// owns reports whether cluster owns every address of p: its claim is the
// earliest covering p, and no other cluster claimed a range inside p before
// it. The second check scans the ranges only for a prefix wider than some
// range (pod addresses, the bulk, are never wider than any).
func (o *ownership) owns(cluster uint16, p netip.Prefix) bool {
	best, ok := o.covering(p)
	if !ok || best.cluster != cluster {
		return false
	}
	fam := family(p.Addr())
	inner := false
	for bits := p.Bits() + 1; bits <= p.Addr().BitLen(); bits++ {
		inner = inner || o.lens[fam][bits] > 0
	}
	if !inner {
		return true
	}
	for q, cs := range o.claims {
		if q.Bits() <= p.Bits() || !p.Contains(q.Addr()) {
			continue
		}
		for _, c := range cs {
			if c.cluster != cluster && c.seq < best.seq {
				return false
			}
		}
	}
	return true
}

// add records one more node of cluster stating range p; it reports whether
// the cluster's claim on p is new.
func (o *ownership) add(cluster uint16, p netip.Prefix) bool {
	refs := o.refs[cluster]
	if refs == nil {
		refs = map[netip.Prefix]int{}
		o.refs[cluster] = refs
	}
	refs[p]++
	if refs[p] > 1 {
		return false
	}
	o.seq++
	o.claims[p] = append(o.claims[p], rangeClaim{cluster: cluster, seq: o.seq})
	o.lens[family(p.Addr())][p.Bits()]++
	return true
}

// remove records one node fewer of cluster stating p; it reports whether the
// cluster's claim on p is gone.
func (o *ownership) remove(cluster uint16, p netip.Prefix) bool {
	refs := o.refs[cluster]
	if refs[p] == 0 {
		return false
	}
	refs[p]--
	if refs[p] > 0 {
		return false
	}
	delete(refs, p)
	if len(refs) == 0 {
		delete(o.refs, cluster)
	}
	cs := o.claims[p]
	for i, c := range cs {
		if c.cluster == cluster {
			cs = append(cs[:i], cs[i+1:]...)
			break
		}
	}
	if len(cs) == 0 {
		delete(o.claims, p)
	} else {
		o.claims[p] = cs
	}
	o.lens[family(p.Addr())][p.Bits()]--
	return true
}

// dropCluster forgets every range of cluster; it reports whether it had any.
func (o *ownership) dropCluster(cluster uint16) bool {
	refs := o.refs[cluster]
	had := len(refs) > 0
	for p := range refs {
		refs[p] = 1
		o.remove(cluster, p)
	}
	return had
}

// nodeRanges returns the address ranges a remote node owns: its pod CIDRs
// and its own addresses (host-network pods and the node itself).
func NodeRanges(n *wire.Node) []netip.Prefix {
	var out []netip.Prefix
	addr := func(a netip.Addr) {
		if a.IsValid() {
			a = a.Unmap()
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	for _, a := range n.IPAddresses {
		addr(a.IP)
	}
	addr(n.IPv4HealthIP)
	addr(n.IPv6HealthIP)
	for _, c := range []*wire.CIDR{n.IPv4AllocCIDR, n.IPv6AllocCIDR} {
		if c != nil && c.IsValid() {
			out = append(out, c.Masked())
		}
	}
	return out
}

// setNodeRanges applies a change of cluster id's node ranges (one node
// added, removed or changed, or a batch of them) and re-evaluates what the
// change affects: entries held for lack of an owner are claimed once their
// cluster owns them, and entries whose owning range went are held again.
func (m *Merger) SetNodeRanges(id uint16, removed, added []netip.Prefix) {
	m.mu.Lock()
	defer m.mu.Unlock()
	// Additions first: a node restating a range it had keeps the claim
	// (and its place in the order) rather than losing and remaking it.
	lost, gained := false, false
	for _, p := range added {
		gained = m.own.add(id, p) || gained
	}
	for _, p := range removed {
		lost = m.own.remove(id, p) || lost
	}
	if !lost && !gained {
		return
	}
	m.rangesChangedLocked(id, !lost)
	var changed []netip.Prefix
	if lost {
		changed = m.holdUnownedLocked(id)
		// Another cluster's held entries may have been waiting for the
		// range that went.
		for c := range m.held {
			changed = append(changed, m.claimHeldLocked(c)...)
		}
	} else {
		changed = m.claimHeldLocked(id)
	}
	m.writeIPs(changed)
	if lost {
		for n := range m.remoteSvcs {
			m.serviceChangedLocked(n, id)
		}
	} else {
		m.syncServicesOfLocked(id) // gained ranges admit only its own
	}
}

// dropOwnershipLocked forgets a drained cluster's ranges and held entries
// (its claims were withdrawn by the caller); other clusters' held entries
// are re-evaluated.
func (m *Merger) dropOwnershipLocked(id uint16) []netip.Prefix {
	delete(m.held, id)
	if !m.own.dropCluster(id) {
		return nil
	}
	m.rangesChangedLocked(id, false)
	var changed []netip.Prefix
	for c := range m.held {
		changed = append(changed, m.claimHeldLocked(c)...)
	}
	// Other clusters' backends in the ranges that went may now be in
	// force, as after a node's removal (SetNodeRanges).
	m.syncRemoteServicesLocked()
	return changed
}

// admitsLocked reports whether cluster id may claim p: the local cluster's
// own apiserver always may (its entries are this cluster's own), a remote
// only inside the ranges it owns — unless ownership is not checked
// (Config.TrustRemoteAddresses).
func (m *Merger) admitsLocked(id uint16, p netip.Prefix) bool {
	return m.trustAddresses || id == m.localID || m.own.owns(id, p)
}

// holdUnownedLocked moves cluster id's claims it no longer owns to held. It
// returns the prefixes whose winner changed.
func (m *Merger) holdUnownedLocked(id uint16) []netip.Prefix {
	var changed []netip.Prefix
	take := func(p netip.Prefix, e datapath.IPCacheEntry) {
		if m.admitsLocked(id, p) {
			return
		}
		m.holdLocked(id, p, e)
		if m.claimIP(id, p, nil) {
			changed = append(changed, p)
		}
	}
	for p, st := range m.ips.all() {
		if st.claim.ClusterID == id {
			take(p, st.claim)
		}
	}
	for p, more := range m.ipsMore {
		for _, e := range more {
			if e.ClusterID == id {
				take(p, e)
			}
		}
	}
	return changed
}

// claimHeldLocked claims cluster id's held entries it now owns.
func (m *Merger) claimHeldLocked(id uint16) []netip.Prefix {
	var changed []netip.Prefix
	for p, e := range m.held[id] {
		if !m.admitsLocked(id, p) {
			continue
		}
		delete(m.held[id], p)
		if m.claimIP(id, p, &e) {
			changed = append(changed, p)
		}
	}
	if len(m.held[id]) == 0 {
		delete(m.held, id)
	}
	return changed
}

func (m *Merger) holdLocked(id uint16, p netip.Prefix, e datapath.IPCacheEntry) {
	h := m.held[id]
	if h == nil {
		h = map[netip.Prefix]datapath.IPCacheEntry{}
		m.held[id] = h
	}
	h[p] = e
}

// unheldLocked forgets a held entry; it reports whether there was one.
func (m *Merger) unheldLocked(id uint16, p netip.Prefix) bool {
	h := m.held[id]
	if _, ok := h[p]; !ok {
		return false
	}
	delete(h, p)
	if len(h) == 0 {
		delete(m.held, id)
	}
	return true
}

// syncRemoteServicesLocked rewrites every service with remote backends:
// which of them are in force follows the clusters' ranges.
func (m *Merger) syncRemoteServicesLocked() {
	for n := range m.remoteSvcs {
		m.syncService(n)
	}
}

// syncServicesOfLocked rewrites the services cluster id has backends in.
func (m *Merger) syncServicesOfLocked(id uint16) {
	for n, sr := range m.remoteSvcs {
		for _, e := range sr.byCluster {
			if e.rs.clusterID == id {
				m.serviceChangedLocked(n, id)
				break
			}
		}
	}
}

// NotInForce counts what a remote published that the datapath does not
// hold, and why.
type NotInForce struct {
	// IPCacheOutside: ipcache entries outside every node range of the
	// cluster (or received before the node that owns them).
	IPCacheOutside int `json:"ipcacheOutsideRanges,omitempty"`
	// IPCacheClaimed: ipcache entries inside a range another cluster
	// claimed first.
	IPCacheClaimed int `json:"ipcacheClaimedByOther,omitempty"`
	// BackendsOutside: service backends at addresses the cluster does not
	// own.
	BackendsOutside int `json:"backendsOutsideRanges,omitempty"`
}

// Total sums every count.
func (n NotInForce) Total() int { return n.IPCacheOutside + n.IPCacheClaimed + n.BackendsOutside }

// notInForce reports cluster id's (named cluster's) entries that are held.
func (m *Merger) NotInForce(cluster string, id uint16) NotInForce {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n NotInForce
	for p := range m.held[id] {
		if _, ok := m.own.owner(p); ok {
			n.IPCacheClaimed++
		} else {
			n.IPCacheOutside++
		}
	}
	for _, sr := range m.remoteSvcs {
		e := sr.byCluster[cluster]
		if e == nil || e.rs.clusterID == m.localID {
			continue
		}
		rs := e.rs
		for _, bs := range rs.backends {
			for _, b := range bs {
				if !m.own.owns(rs.clusterID, netip.PrefixFrom(b.Addr, b.Addr.BitLen())) {
					n.BackendsOutside++
				}
			}
		}
	}
	return n
}

// ownedNodes returns nodes with the pod CIDRs and addresses their cluster
// does not own removed (copies where something is removed).
func (m *Merger) OwnedNodes(nodes []*wire.Node) []*wire.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.trustAddresses {
		return nodes
	}
	owned := func(n *wire.Node, a netip.Addr) bool {
		a = a.Unmap()
		return m.own.owns(uint16(n.ClusterID), netip.PrefixFrom(a, a.BitLen()))
	}
	out := nodes[:0]
	for _, n := range nodes {
		c := *n
		c.IPAddresses = nil
		for _, a := range n.IPAddresses {
			if owned(n, a.IP) {
				c.IPAddresses = append(c.IPAddresses, a)
			}
		}
		if c.IPv4AllocCIDR != nil && !m.own.owns(uint16(n.ClusterID), c.IPv4AllocCIDR.Masked()) {
			c.IPv4AllocCIDR = nil
		}
		if c.IPv6AllocCIDR != nil && !m.own.owns(uint16(n.ClusterID), c.IPv6AllocCIDR.Masked()) {
			c.IPv6AllocCIDR = nil
		}
		out = append(out, &c)
	}
	return out
}
