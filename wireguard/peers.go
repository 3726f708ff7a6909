package wireguard

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Peer is a remote node as the device should know it.
type Peer struct {
	Cluster string
	Node    string
	// PublicKey is the node's WireGuard public key in base64, as published
	// in its node entry (WireguardPubKey).
	PublicKey string
	// Endpoint is where the node's device listens: its node IP and port. A
	// zero port means Config.ListenPort; an invalid Endpoint means NodeIP and
	// Config.ListenPort.
	Endpoint netip.AddrPort
	// PodCIDRs are routed through the device and are the peer's allowed IPs.
	PodCIDRs []netip.Prefix
	// NodeIP is also an allowed IP, routed through the device, when node
	// encryption is on. Default: the endpoint's address.
	NodeIP netip.Addr
}

// ID is "cluster/node".
func (p Peer) ID() string { return p.Cluster + "/" + p.Node }

// Rejection is a peer that was not configured, and why.
type Rejection struct {
	Cluster string `json:"cluster"`
	Node    string `json:"node"`
	Reason  string `json:"reason"`
}

func (r Rejection) String() string {
	return fmt.Sprintf("WireGuard peer %s/%s rejected: %s", r.Cluster, r.Node, r.Reason)
}

// acceptedPeer is a validated peer, ready to configure.
type acceptedPeer struct {
	cluster, node string
	key           wgtypes.Key
	endpoint      netip.AddrPort
	podCIDRs      []netip.Prefix
	nodeIP        netip.Addr
	allowed       []netip.Prefix // podCIDRs, then the node IP with node encryption
}

func (a *acceptedPeer) id() string { return a.cluster + "/" + a.node }

// planInput is everything validation depends on.
type planInput struct {
	peers          []Peer
	local          []netip.Prefix // local pod CIDRs
	localNodeIP    netip.Addr
	ownKey         wgtypes.Key // this node's public key
	incumbents     map[string]bool
	nodeEncryption bool
	port           int
}

// plan validates the desired peers. A peer whose public key is missing or
// invalid, or that claims an address that is already claimed (a local pod
// CIDR or the node's IP, or another peer's pod CIDR, node IP or key) is
// rejected as a whole and configures nothing. Conflicts are settled in favour
// of the peer accepted in the previous round (an incumbent), then by cluster
// and node name, so that a newcomer can never take an address away from a
// working peer.
func plan(in planInput) (accepted []*acceptedPeer, rejected []Rejection) {
	order := make([]int, len(in.peers))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		pa, pb := &in.peers[a], &in.peers[b]
		ia, ib := in.incumbents[pa.ID()], in.incumbents[pb.ID()]
		if ia != ib {
			if ia {
				return -1
			}
			return 1
		}
		return cmp.Or(cmp.Compare(pa.Cluster, pb.Cluster), cmp.Compare(pa.Node, pb.Node))
	})

	var claims prefixTrie
	for _, p := range in.local {
		claims.insert(p.Masked(), &claim{label: "local pod CIDR " + p.Masked().String()})
	}
	if in.localNodeIP.IsValid() {
		claims.insert(netip.PrefixFrom(in.localNodeIP, in.localNodeIP.BitLen()), &claim{label: "this node's IP " + in.localNodeIP.String()})
	}
	seen := map[string]bool{}
	keys := map[wgtypes.Key]string{}
	for _, i := range order {
		p := &in.peers[i]
		a, reason := check(in, p, seen, keys, &claims)
		if reason != "" {
			rejected = append(rejected, Rejection{Cluster: p.Cluster, Node: p.Node, Reason: reason})
			continue
		}
		seen[a.id()] = true
		keys[a.key] = a.id()
		for _, pc := range a.podCIDRs {
			claims.insert(pc, &claim{label: "pod CIDR " + pc.String() + " of " + a.id(), pod: true, owner: a.id()})
		}
		if in.nodeEncryption {
			claims.insert(netip.PrefixFrom(a.nodeIP, a.nodeIP.BitLen()), &claim{label: "node IP " + a.nodeIP.String() + " of " + a.id(), owner: a.id()})
		}
		accepted = append(accepted, a)
	}

	// A tunnel endpoint inside a pod CIDR routed through the device would
	// send the device's own packets into itself.
	kept := accepted[:0]
	for _, a := range accepted {
		if c := claims.find(netip.PrefixFrom(a.endpoint.Addr(), a.endpoint.Addr().BitLen())); c != nil && c.pod {
			rejected = append(rejected, Rejection{Cluster: a.cluster, Node: a.node,
				Reason: fmt.Sprintf("endpoint %s lies inside %s: its tunnel packets would be routed into the tunnel", a.endpoint.Addr(), c.label)})
			continue
		}
		kept = append(kept, a)
	}
	slices.SortFunc(rejected, func(a, b Rejection) int {
		return cmp.Or(cmp.Compare(a.Cluster, b.Cluster), cmp.Compare(a.Node, b.Node))
	})
	return kept, rejected
}

// check validates one peer against what is already accepted.
func check(in planInput, p *Peer, seen map[string]bool, keys map[wgtypes.Key]string, claims *prefixTrie) (*acceptedPeer, string) {
	if p.Cluster == "" || p.Node == "" {
		return nil, "cluster and node name are required"
	}
	if seen[p.ID()] {
		return nil, "listed twice"
	}
	if p.PublicKey == "" {
		return nil, "no WireGuard public key published (is WireGuard enabled on that node?)"
	}
	key, err := wgtypes.ParseKey(p.PublicKey)
	if err != nil {
		return nil, fmt.Sprintf("invalid public key %q: not the base64 encoding of 32 bytes", truncate(p.PublicKey, 60))
	}
	if key == (wgtypes.Key{}) {
		return nil, "invalid public key: all zero"
	}
	if key == in.ownKey {
		return nil, "public key is this node's own"
	}
	if other, ok := keys[key]; ok {
		return nil, "public key already used by " + other
	}

	ep := p.Endpoint
	if !ep.Addr().IsValid() {
		if !p.NodeIP.IsValid() {
			return nil, "no endpoint: neither an endpoint nor a node IP"
		}
		ep = netip.AddrPortFrom(p.NodeIP, 0)
	}
	addr := ep.Addr().Unmap()
	port := ep.Port()
	if port == 0 {
		port = uint16(in.port)
	}
	ep = netip.AddrPortFrom(addr, port)
	if addr.IsUnspecified() || addr.IsMulticast() || addr.Zone() != "" || addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return nil, fmt.Sprintf("endpoint %s is not a unicast address without zone", addr)
	}
	if addr == in.localNodeIP {
		return nil, fmt.Sprintf("endpoint %s is this node's own IP", addr)
	}
	nodeIP := p.NodeIP.Unmap()
	if !nodeIP.IsValid() {
		nodeIP = addr
	}
	if nodeIP.IsUnspecified() || nodeIP.IsMulticast() || nodeIP.Zone() != "" {
		return nil, fmt.Sprintf("node IP %s is not a unicast address without zone", nodeIP)
	}

	a := &acceptedPeer{cluster: p.Cluster, node: p.Node, key: key, endpoint: ep, nodeIP: nodeIP}
	for _, pc := range p.PodCIDRs {
		if !pc.IsValid() {
			return nil, "a pod CIDR is invalid"
		}
		pc = netip.PrefixFrom(pc.Addr().Unmap(), pc.Bits()-(pc.Addr().BitLen()-pc.Addr().Unmap().BitLen())).Masked()
		if !pc.IsValid() {
			return nil, "a pod CIDR is invalid (IPv4-mapped with fewer than 96 bits)"
		}
		if slices.Contains(a.podCIDRs, pc) {
			continue
		}
		if (pc.Addr().Is4() && pc.Bits() < 8) || (pc.Addr().Is6() && pc.Bits() < 16) {
			return nil, fmt.Sprintf("pod CIDR %s is wider than a node's pod CIDR can be (/8 for IPv4, /16 for IPv6)", pc)
		}
		if pc.Contains(addr) {
			return nil, fmt.Sprintf("pod CIDR %s contains the node's own endpoint %s: its tunnel packets would be routed into the tunnel", pc, addr)
		}
		if in.nodeEncryption && pc.Contains(nodeIP) {
			return nil, fmt.Sprintf("pod CIDR %s contains the node's own IP %s", pc, nodeIP)
		}
		if c := claims.find(pc); c != nil {
			return nil, fmt.Sprintf("pod CIDR %s overlaps %s", pc, c.label)
		}
		a.podCIDRs = append(a.podCIDRs, pc)
	}
	a.allowed = append(a.allowed, a.podCIDRs...)
	if in.nodeEncryption {
		np := netip.PrefixFrom(nodeIP, nodeIP.BitLen())
		if c := claims.find(np); c != nil {
			return nil, fmt.Sprintf("node IP %s overlaps %s", nodeIP, c.label)
		}
		a.allowed = append(a.allowed, np)
	}
	// Overlaps among the peer's own prefixes are harmless (WireGuard and
	// the routes both take the most specific); later peers see them all.
	return a, ""
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// claim is who holds a prefix.
type claim struct {
	label string
	pod   bool   // a remote pod CIDR
	owner string // the peer's id, "" for local claims
}

// prefixTrie is a binary trie of claimed prefixes: find answers "does any
// claimed prefix overlap p" in O(prefix length), so validating n peers costs
// O(n), not O(n²).
type prefixTrie struct{ root [2]*trieNode } // IPv4, IPv6

type trieNode struct {
	child [2]*trieNode
	claim *claim
	count int // insertions at or below this node
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

func bitAt(a netip.Addr, i int) int {
	if a.Is4() {
		b := a.As4()
		return int(b[i/8]>>(7-i%8)) & 1
	}
	b := a.As16()
	return int(b[i/8]>>(7-i%8)) & 1
}

func (t *prefixTrie) insert(p netip.Prefix, c *claim) {
	f := family(p.Addr())
	if t.root[f] == nil {
		t.root[f] = &trieNode{}
	}
	n := t.root[f]
	n.count++
	for i := 0; i < p.Bits(); i++ {
		b := bitAt(p.Addr(), i)
		if n.child[b] == nil {
			n.child[b] = &trieNode{}
		}
		n = n.child[b]
		n.count++
	}
	n.claim = c
}

// find returns a claim overlapping p (one containing p, or contained in it).
func (t *prefixTrie) find(p netip.Prefix) *claim {
	n := t.root[family(p.Addr())]
	for i := 0; n != nil; i++ {
		if n.claim != nil {
			return n.claim
		}
		if i == p.Bits() {
			if n.count == 0 {
				return nil
			}
			for n.claim == nil {
				if c := n.child[0]; c != nil && c.count > 0 {
					n = c
				} else {
					n = n.child[1]
				}
			}
			return n.claim
		}
		n = n.child[bitAt(p.Addr(), i)]
	}
	return nil
}
