package agentsync

import (
	"net/netip"

	"github.com/clustermesh/clustermesh/datapath"
)

// ipClaim and setIP give the merger tests a per-claim API over setIPs.
type ipClaim struct {
	clusterID uint16
	entry     datapath.IPCacheEntry
}

var testClusterIDs = map[string]uint16{"cluster-a": 2, "cluster-b": 3, "west": 2, "cluster-z": 26}

func (m *merger) setIP(cluster string, p netip.Prefix, c *ipClaim) {
	u := ipClaimUpdate{prefix: p}
	if c != nil {
		e := c.entry
		e.ClusterID = c.clusterID
		u.entry = &e
	}
	m.setIPs(testClusterIDs[cluster], []ipClaimUpdate{u})
}
