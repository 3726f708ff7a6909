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
	pl := newPlanner(in)
	for _, i := range planOrder(in) {
		p := &in.peers[i]
		a, reason := pl.check(p)
		if reason != "" {
			rejected = append(rejected, Rejection{Cluster: p.Cluster, Node: p.Node, Reason: reason})
			continue
		}
		pl.claim(a)
		accepted = append(accepted, a)
	}
	accepted, looping := pl.dropLoopingEndpoints(accepted)
	rejected = append(rejected, looping...)
	slices.SortFunc(rejected, func(a, b Rejection) int {
		return cmp.Or(cmp.Compare(a.Cluster, b.Cluster), cmp.Compare(a.Node, b.Node))
	})
	return accepted, rejected
}

// planOrder is the order in which plan considers the peers (indexes into
// in.peers): incumbents first, then by cluster and node name.
func planOrder(in planInput) []int {
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
	return order
}

// planner holds what the peers accepted so far claim: their ids, keys and
// addresses (with the local node's).
type planner struct {
	in     planInput
	seen   map[string]bool
	keys   map[wgtypes.Key]string // key → id
	claims prefixTrie
}

func newPlanner(in planInput) *planner {
	pl := &planner{in: in, seen: map[string]bool{}, keys: map[wgtypes.Key]string{}}
	for _, p := range in.local {
		pl.claims.insert(p.Masked(), &claim{label: "local pod CIDR " + p.Masked().String()})
	}
	if ip := in.localNodeIP; ip.IsValid() {
		pl.claims.insert(netip.PrefixFrom(ip, ip.BitLen()), &claim{label: "this node's IP " + ip.String()})
	}
	return pl
}

// claim records an accepted peer's id, key and addresses.
func (pl *planner) claim(a *acceptedPeer) {
	id := a.id()
	pl.seen[id] = true
	pl.keys[a.key] = id
	for _, pc := range a.podCIDRs {
		pl.claims.insert(pc, &claim{label: "pod CIDR " + pc.String() + " of " + id, pod: true, owner: id})
	}
	if pl.in.nodeEncryption {
		pl.claims.insert(netip.PrefixFrom(a.nodeIP, a.nodeIP.BitLen()), &claim{label: "node IP " + a.nodeIP.String() + " of " + id, owner: id})
	}
}

// dropLoopingEndpoints rejects the accepted peers whose endpoint lies inside
// a pod CIDR routed through the device (their own or another peer's): the
// device's own packets would be sent into itself.
func (pl *planner) dropLoopingEndpoints(accepted []*acceptedPeer) (kept []*acceptedPeer, rejected []Rejection) {
	kept = accepted[:0]
	for _, a := range accepted {
		ep := a.endpoint.Addr()
		if c := pl.claims.find(netip.PrefixFrom(ep, ep.BitLen())); c != nil && c.pod {
			rejected = append(rejected, Rejection{Cluster: a.cluster, Node: a.node,
				Reason: fmt.Sprintf("endpoint %s lies inside %s: its tunnel packets would be routed into the tunnel", ep, c.label)})
			continue
		}
		kept = append(kept, a)
	}
	return kept, rejected
}

// check validates one peer against what is already accepted; a non-empty
// reason rejects it.
func (pl *planner) check(p *Peer) (a *acceptedPeer, reason string) {
	if p.Cluster == "" || p.Node == "" {
		return nil, "cluster and node name are required"
	}
	if pl.seen[p.ID()] {
		return nil, "listed twice"
	}
	key, reason := pl.checkKey(p.PublicKey)
	if reason != "" {
		return nil, reason
	}
	ep, nodeIP, reason := pl.checkAddresses(p)
	if reason != "" {
		return nil, reason
	}
	a = &acceptedPeer{cluster: p.Cluster, node: p.Node, key: key, endpoint: ep, nodeIP: nodeIP}
	if a.podCIDRs, reason = pl.checkPodCIDRs(p.PodCIDRs, ep.Addr(), nodeIP); reason != "" {
		return nil, reason
	}
	a.allowed = append(a.allowed, a.podCIDRs...)
	if pl.in.nodeEncryption {
		np := netip.PrefixFrom(nodeIP, nodeIP.BitLen())
		if c := pl.claims.find(np); c != nil {
			return nil, fmt.Sprintf("node IP %s overlaps %s", nodeIP, c.label)
		}
		a.allowed = append(a.allowed, np)
	}
	// Overlaps among the peer's own prefixes are harmless (WireGuard and
	// the routes both take the most specific); later peers see them all.
	return a, ""
}

// checkKey parses a peer's public key and checks that it is nobody else's.
func (pl *planner) checkKey(s string) (wgtypes.Key, string) {
	if s == "" {
		return wgtypes.Key{}, "no WireGuard public key published (is WireGuard enabled on that node?)"
	}
	key, err := wgtypes.ParseKey(s)
	if err != nil {
		return key, fmt.Sprintf("invalid public key %q: not the base64 encoding of 32 bytes", truncate(s, 60))
	}
	if key == (wgtypes.Key{}) {
		return key, "invalid public key: all zero"
	}
	if key == pl.in.ownKey {
		return key, "public key is this node's own"
	}
	if other, ok := pl.keys[key]; ok {
		return key, "public key already used by " + other
	}
	return key, ""
}

// checkAddresses returns a peer's endpoint (its node IP when it has none,
// the listen port when it has no port) and node IP (the endpoint's address
// when it has none), both unicast and not this node's.
func (pl *planner) checkAddresses(p *Peer) (ep netip.AddrPort, nodeIP netip.Addr, reason string) {
	ep = p.Endpoint
	if !ep.Addr().IsValid() {
		if !p.NodeIP.IsValid() {
			return ep, nodeIP, "no endpoint: neither an endpoint nor a node IP"
		}
		ep = netip.AddrPortFrom(p.NodeIP, 0)
	}
	addr := ep.Addr().Unmap()
	port := ep.Port()
	if port == 0 {
		port = uint16(pl.in.port)
	}
	ep = netip.AddrPortFrom(addr, port)
	if addr.IsUnspecified() || addr.IsMulticast() || addr.Zone() != "" || addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return ep, nodeIP, fmt.Sprintf("endpoint %s is not a unicast address without zone", addr)
	}
	if addr == pl.in.localNodeIP {
		return ep, nodeIP, fmt.Sprintf("endpoint %s is this node's own IP", addr)
	}
	nodeIP = p.NodeIP.Unmap()
	if !nodeIP.IsValid() {
		nodeIP = addr
	}
	if nodeIP.IsUnspecified() || nodeIP.IsMulticast() || nodeIP.Zone() != "" {
		return ep, nodeIP, fmt.Sprintf("node IP %s is not a unicast address without zone", nodeIP)
	}
	return ep, nodeIP, ""
}

// checkPodCIDRs returns a peer's pod CIDRs unmapped, masked and without
// duplicates, each of them a plausible node pod CIDR that holds neither
// the peer's endpoint nor (with node encryption) its node IP, and that
// overlaps nothing claimed.
func (pl *planner) checkPodCIDRs(cidrs []netip.Prefix, endpoint, nodeIP netip.Addr) ([]netip.Prefix, string) {
	var out []netip.Prefix
	for _, pc := range cidrs {
		if !pc.IsValid() {
			return nil, "a pod CIDR is invalid"
		}
		pc = netip.PrefixFrom(pc.Addr().Unmap(), pc.Bits()-(pc.Addr().BitLen()-pc.Addr().Unmap().BitLen())).Masked()
		if !pc.IsValid() {
			return nil, "a pod CIDR is invalid (IPv4-mapped with fewer than 96 bits)"
		}
		if slices.Contains(out, pc) {
			continue
		}
		if (pc.Addr().Is4() && pc.Bits() < 8) || (pc.Addr().Is6() && pc.Bits() < 16) {
			return nil, fmt.Sprintf("pod CIDR %s is wider than a node's pod CIDR can be (/8 for IPv4, /16 for IPv6)", pc)
		}
		if pc.Contains(endpoint) {
			return nil, fmt.Sprintf("pod CIDR %s contains the node's own endpoint %s: its tunnel packets would be routed into the tunnel", pc, endpoint)
		}
		if pl.in.nodeEncryption && pc.Contains(nodeIP) {
			return nil, fmt.Sprintf("pod CIDR %s contains the node's own IP %s", pc, nodeIP)
		}
		if c := pl.claims.find(pc); c != nil {
			return nil, fmt.Sprintf("pod CIDR %s overlaps %s", pc, c.label)
		}
		out = append(out, pc)
	}
	return out, ""
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
