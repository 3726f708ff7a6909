package merge

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/wire"
)

// RemoteBackends is what one remote cluster offers for a global service as
// the merge admits it: its backends per port name, only those within the
// addresses the cluster owns (ownership.go). The EndpointSlice writer
// (k8sslices) reads it.
type RemoteBackends struct {
	Cluster   string
	ClusterID uint16
	Ports     map[string][]datapath.Backend // port name → backends
	// Topology is what the remote publishes of its backends besides their
	// ports (Cilium's ClusterService hostnames and zones, and our
	// clustermesh.io/terminating), by address; nil when it publishes none
	// (an older apiserver). Read only.
	Topology map[netip.Addr]BackendTopology
}

// BackendTopology is a remote backend's hostname, zone and the zones its
// topology hints name, as its cluster publishes them (unchecked: a reader
// writing them somewhere validates them there), and whether it is
// terminating (still serving, no longer ready: wire.TerminatingField). A
// terminating backend is selected as any other: it still serves, as in
// Cilium.
type BackendTopology struct {
	Hostname    string
	Zone        string
	ForZones    []string
	Terminating bool
}

// remoteTopology is s's hostnames, zones and terminating backends by
// backend address, nil when it has none.
func remoteTopology(s *wire.ClusterService) map[netip.Addr]BackendTopology {
	if len(s.Hostnames) == 0 && len(s.Zones) == 0 && len(s.Terminating) == 0 {
		return nil
	}
	terminating := make(map[string]bool, len(s.Terminating))
	for _, ip := range s.Terminating {
		terminating[ip] = true
	}
	out := map[netip.Addr]BackendTopology{}
	for ip := range s.Backends {
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			continue
		}
		z, hasZone := s.Zones[ip]
		h := s.Hostnames[ip]
		if !hasZone && h == "" && !terminating[ip] {
			continue
		}
		t := BackendTopology{Hostname: h, Zone: z.Zone, Terminating: terminating[ip]}
		for _, f := range z.ForZones {
			t.ForZones = append(t.ForZones, f.Name)
		}
		out[addr.Unmap()] = t
	}
	return out
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
		rb := RemoteBackends{Cluster: cluster, ClusterID: rs.clusterID, Ports: map[string][]datapath.Backend{}, Topology: rs.topology}
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
