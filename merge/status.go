package merge

import (
	"sort"
)

// ServiceStatus is one global service of the local cluster: its backends by
// origin and which its affinity selected.
type ServiceStatus struct {
	Namespace    string `json:"namespace"`
	Name         string `json:"name"`
	Frontend     string `json:"frontend"`
	Affinity     string `json:"affinity"`
	LocalHealthy int    `json:"localHealthy"`
	LocalTotal   int    `json:"localTotal"`
	// Remote counts each remote cluster's backends; RemoteHealthy those not
	// excluded (a stale cluster, with failover-on-stale-cluster).
	Remote        map[string]int `json:"remote"`
	RemoteHealthy map[string]int `json:"remoteHealthy"`
	RemoteTotal   int            `json:"remoteTotal"`
	Selected      int            `json:"selected"`     // slots
	SelectedFrom  string         `json:"selectedFrom"` // local, remote, local+remote, weighted, none
	Warning       string         `json:"warning,omitempty"`
	// Annotations lists annotations that were ignored, and why.
	Annotations []string `json:"annotations,omitempty"`
}

// selectionWarning says when a frontend's traffic is at risk: nothing
// selected, or everything selected from one remote cluster that is stale.
func (m *Merger) selectionWarning(v portView) string {
	if len(v.selected) == 0 {
		return "no backend selected: traffic to this service is refused"
	}
	if v.selectedFrom == "local (terminating)" {
		return "no ready backend anywhere: only terminating pods that still serve take the traffic"
	}
	clusters := map[uint16]bool{}
	for _, b := range v.selected {
		clusters[b.ClusterID] = true
	}
	if len(clusters) == 1 && !clusters[m.localID] {
		for c, bs := range v.remote {
			if len(bs) > 0 && bs[0].ClusterID == v.selected[0].ClusterID && m.stale[c] {
				return "depends only on cluster " + c + ", whose heartbeat is stale"
			}
		}
	}
	return ""
}

// serviceStatuses describes every local global service, one line per port.
func (m *Merger) ServiceStatuses() []ServiceStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ServiceStatus
	for n, ls := range m.localSvcs {
		if !ls.ClusterIP.IsValid() {
			continue
		}
		for _, v := range m.portViews(ls) {
			s := ServiceStatus{Namespace: n.Namespace, Name: n.Name, Frontend: v.frontend.String(), Affinity: v.affinity,
				LocalTotal: v.localTotal, LocalHealthy: len(v.local), Remote: v.remoteTotal, RemoteHealthy: map[string]int{},
				Selected: len(v.selected), SelectedFrom: v.selectedFrom, Annotations: v.warnings}
			for c, n := range v.remoteTotal {
				s.RemoteTotal += n
				s.RemoteHealthy[c] = len(v.remote[c])
			}
			s.Warning = m.selectionWarning(v)
			out = append(out, s)
		}
	}
	for n, sr := range m.remoteSvcs {
		if _, ok := m.localSvcs[n]; ok {
			continue
		}
		s := ServiceStatus{Namespace: n.Namespace, Name: n.Name, Remote: map[string]int{}, SelectedFrom: "none",
			Warning: "exists only in remote clusters: not served until a local service of this name is annotated global"}
		for c, e := range sr.byCluster {
			for _, bs := range e.rs.backends {
				s.Remote[c] += len(bs)
				s.RemoteTotal += len(bs)
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return a.Frontend < b.Frontend
	})
	return out
}
