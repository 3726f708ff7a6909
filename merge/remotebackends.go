package merge

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/clustermesh/clustermesh/datapath"
)

// RemoteBackends is what one remote cluster offers for a global service as
// the merge admits it: its backends per port name, only those within the
// addresses the cluster owns (ownership.go). The EndpointSlice writer
// (k8sslices) reads it.
type RemoteBackends struct {
	Cluster   string
	ClusterID uint16
	Ports     map[string][]datapath.Backend // port name → backends
}

// RemoteBackends returns every remote cluster's admitted backends of service
// n, by cluster name; none when no remote offers it. Config.OnServiceChange
// says when it may have changed.
func (m *Merger) RemoteBackends(n ServiceName) []RemoteBackends {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []RemoteBackends
	sr := m.remoteSvcs[n]
	if sr == nil {
		return nil
	}
	for cluster, e := range sr.byCluster {
		rs := e.rs
		rb := RemoteBackends{Cluster: cluster, ClusterID: rs.clusterID, Ports: map[string][]datapath.Backend{}}
		for port, bes := range rs.backends {
			for _, b := range bes {
				if m.admitsLocked(rs.clusterID, netip.PrefixFrom(b.Addr, b.Addr.BitLen())) {
					rb.Ports[port] = append(rb.Ports[port], b)
				}
			}
		}
		out = append(out, rb)
	}
	slices.SortFunc(out, func(a, b RemoteBackends) int { return cmp.Compare(a.Cluster, b.Cluster) })
	return out
}
