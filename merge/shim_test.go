package merge

import (
	"log/slog"
	"net/netip"

	"github.com/clustermesh/clustermesh/datapath"
)

// ipClaim and setIP give the merger tests a per-claim API over setIPs.
type ipClaim struct {
	clusterID uint16
	entry     datapath.IPCacheEntry
}

var testClusterIDs = map[string]uint16{"cluster-a": 2, "cluster-b": 3, "west": 2, "cluster-z": 26}

func (m *Merger) setIP(cluster string, p netip.Prefix, c *ipClaim) {
	u := IPUpdate{Prefix: p}
	if c != nil {
		e := c.entry
		e.ClusterID = c.clusterID
		u.Entry = &e
	}
	m.SetIPs(testClusterIDs[cluster], []IPUpdate{u})
}

// newMerger is New with the tests' usual config.
func newMerger(dp datapath.Writer, localName string, localID uint16, log *slog.Logger) *Merger {
	return New(Config{Datapath: dp, ClusterName: localName, ClusterID: localID, Logger: log})
}
