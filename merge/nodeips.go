package merge

import (
	"net/netip"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// nodeClaimID is the claimant id of the local nodes' addresses in the
// ipcache: 0, which no cluster has, so that these claims never mix with a
// cluster's (a drain by cluster id leaves them) and, being the lowest,
// win. The entries carry cluster 0: reserved identities have no cluster.
const nodeClaimID = 0

// claimLocalNodesLocked makes the ipcache hold the local nodes' addresses:
// this node's (nodeName) as the host identity, the others' as remote-node.
// Nothing without a node name. It returns the prefixes whose winner
// changed. m.mu is held.
func (m *Merger) claimLocalNodesLocked(st *statesource.State) []netip.Prefix {
	if m.nodeName == "" {
		return nil
	}
	want := map[netip.Prefix]datapath.IPCacheEntry{}
	for _, n := range st.Nodes {
		id := wire.IdentityRemoteNode
		if n.Name == m.nodeName {
			id = wire.IdentityHost
		}
		for _, ip := range n.IPs {
			ip = ip.Unmap()
			want[netip.PrefixFrom(ip, ip.BitLen())] = datapath.IPCacheEntry{Identity: id, ClusterID: nodeClaimID}
		}
	}
	var changed []netip.Prefix
	for p := range m.nodeClaims {
		if _, ok := want[p]; !ok && m.claimIP(nodeClaimID, p, nil) {
			changed = append(changed, p)
		}
	}
	for p, e := range want {
		if m.claimIP(nodeClaimID, p, &e) {
			changed = append(changed, p)
		}
	}
	m.nodeClaims = want
	return changed
}
