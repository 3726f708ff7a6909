package wireguard

import (
	"net/netip"

	"github.com/clustermesh/clustermesh/wire"
)

// PeerFromNode is the peer for a remote node learned through sync: its
// published public key, its primary IP (first InternalIP) as node IP and
// endpoint on listenPort (every node of the mesh listens on the same port,
// as in Cilium), and its IPv4 and IPv6 pod CIDRs. A node without a key or
// address still yields a Peer, which SetPeers rejects with the reason, so
// that it shows in status instead of vanishing.
func PeerFromNode(n *wire.Node, listenPort int) Peer {
	p := Peer{Cluster: n.Cluster, Node: n.Name, PublicKey: n.WireguardPubKey}
	if ip := n.PrimaryIP(); ip.IsValid() {
		p.NodeIP = ip.Unmap()
		p.Endpoint = netip.AddrPortFrom(p.NodeIP, uint16(listenPort))
	}
	for _, c := range []*wire.CIDR{n.IPv4AllocCIDR, n.IPv6AllocCIDR} {
		if c != nil && c.IsValid() {
			p.PodCIDRs = append(p.PodCIDRs, c.Prefix)
		}
	}
	return p
}
