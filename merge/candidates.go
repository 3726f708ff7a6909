package merge

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/clustermesh/clustermesh/datapath"
)

// Candidate backends. A global service's remote backends are kept per
// cluster, each cluster's already filtered by the address ranges it owns
// and sorted, so that one cluster's update recomputes that cluster's
// share alone: the others' are concatenated in cluster id order, which is
// the datapath's slot order (compareBackends), without sorting or checking
// ownership again. A cluster's admitted backends are recomputed when the
// ranges that decide admission change (admitGenLocked).

// remoteEntry is one cluster's view of one service as the merger holds it.
type remoteEntry struct {
	cluster string
	rs      *RemoteService
	// admitted holds, per port name and protocol, the backends the
	// cluster's ranges admit, sorted; valid while gen is the cluster's
	// admission generation. A service has a port or two: a slice is
	// smaller than a map.
	admitted []admittedPort
	gen      uint64
}

type admittedPort struct {
	name     string
	proto    datapath.Protocol
	backends []datapath.Backend // shares rs.backends' array when all are admitted
}

// serviceRemotes is every remote cluster's view of one service.
type serviceRemotes struct {
	byCluster map[string]*remoteEntry
	ordered   []*remoteEntry // by cluster id, then name; nil: to rebuild
}

// sorted returns the clusters' entries in slot order.
func (sr *serviceRemotes) sorted() []*remoteEntry {
	if sr == nil {
		return nil
	}
	if sr.ordered == nil && len(sr.byCluster) > 0 {
		sr.ordered = make([]*remoteEntry, 0, len(sr.byCluster))
		for _, e := range sr.byCluster {
			sr.ordered = append(sr.ordered, e)
		}
		slices.SortFunc(sr.ordered, func(a, b *remoteEntry) int {
			return cmp.Or(cmp.Compare(a.rs.clusterID, b.rs.clusterID), cmp.Compare(a.cluster, b.cluster))
		})
	}
	return sr.ordered
}

// set stores cluster's view (nil deletes it); it reports whether anything
// was there or is now.
func (sr *serviceRemotes) set(cluster string, rs *RemoteService) bool {
	if rs == nil {
		if _, ok := sr.byCluster[cluster]; !ok {
			return false
		}
		delete(sr.byCluster, cluster)
	} else {
		sr.byCluster[cluster] = &remoteEntry{cluster: cluster, rs: rs}
	}
	sr.ordered = nil
	return true
}

// admitGenLocked is cluster id's admission generation: it changes whenever
// which of its addresses it owns may have changed. Both counts only grow,
// so their sum changes when either does.
func (m *Merger) admitGenLocked(id uint16) uint64 {
	return m.rangesGen + m.rangesGenOf[id]
}

// rangesChangedLocked records a change of the node ranges: gained alone
// (cluster id added ranges, none went) changes what id owns and nobody
// else's (a range added later never takes what an earlier one covers);
// anything else may change every cluster's.
func (m *Merger) rangesChangedLocked(id uint16, gainedOnly bool) {
	if gainedOnly {
		m.rangesGenOf[id]++
		return
	}
	m.rangesGen++
}

// admittedLocked returns e's backends of port name and protocol proto that
// its cluster's ranges admit, sorted. The slice is shared: never modify it.
func (m *Merger) admittedLocked(e *remoteEntry, name string, proto datapath.Protocol) []datapath.Backend {
	id := e.rs.clusterID
	if gen := m.admitGenLocked(id); e.gen != gen {
		e.admitted, e.gen = e.admitted[:0], gen
	}
	for _, a := range e.admitted {
		if a.name == name && a.proto == proto {
			return a.backends
		}
	}
	all := e.rs.backends[name]
	n := 0
	for _, b := range all {
		if b.Protocol == proto && m.admitsLocked(id, netip.PrefixFrom(b.Addr, b.Addr.BitLen())) {
			n++
		}
	}
	bs := all // NewRemoteService sorted them
	if n < len(all) {
		bs = make([]datapath.Backend, 0, n)
		for _, b := range all {
			if b.Protocol == proto && m.admitsLocked(id, netip.PrefixFrom(b.Addr, b.Addr.BitLen())) {
				bs = append(bs, b)
			}
		}
	}
	if !slices.IsSortedFunc(bs, compareBackends) {
		bs = slices.SortedFunc(slices.Values(bs), compareBackends)
	}
	bs = slices.Clip(bs)
	e.admitted = append(e.admitted, admittedPort{name: name, proto: proto, backends: bs})
	return bs
}

// compareBackends is the slot order: cluster id, address, port, protocol.
func compareBackends(a, b datapath.Backend) int {
	return cmp.Or(cmp.Compare(a.ClusterID, b.ClusterID), a.Addr.Compare(b.Addr),
		cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
}

func backendLess(a, b datapath.Backend) bool { return compareBackends(a, b) < 0 }

func sortBackends(bs []datapath.Backend) { slices.SortFunc(bs, compareBackends) }

// mergeSorted merges two lists sorted in slot order into a new one.
func mergeSorted(a, b []datapath.Backend) []datapath.Backend {
	out := make([]datapath.Backend, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		if compareBackends(b[0], a[0]) < 0 {
			out, b = append(out, b[0]), b[1:]
		} else {
			out, a = append(out, a[0]), a[1:]
		}
	}
	return append(append(out, a...), b...)
}
