package agentsync

import (
	"errors"
	"sort"
	"strconv"
	"time"

	"github.com/clustermesh/clustermesh/wire"
)

// Status is what an agent reports: the truth about every remote and every
// global service, as JSON for `clustermesh status`.
type Status struct {
	Cluster   string         `json:"cluster"`
	ClusterID uint32         `json:"clusterID"`
	Datapath  string         `json:"datapath"` // "ebpf" or "memory"
	Remotes   []RemoteStatus `json:"remotes"`
	// Local is the cluster's own apiserver (identities and ipcache of the
	// local pods, for policy), when the config directory has its config.
	Local    *RemoteStatus   `json:"local,omitempty"`
	Services []ServiceStatus `json:"services"`
	// DatapathErrors counts failed datapath writes; LastDatapathError is the
	// latest.
	DatapathErrors    uint64 `json:"datapathErrors"`
	LastDatapathError string `json:"lastDatapathError,omitempty"`
	// Retained is what a previous run of the agent left in the datapath
	// that still waits for its cluster's first full sync (nil when
	// nothing does).
	Retained *Retained `json:"retained,omitempty"`
}

// Retained counts the entries a previous run left in the datapath and that
// are kept, in force, until their cluster has fully synced: a restart never
// removes what a remote that is down said.
type Retained struct {
	IPCache  int      `json:"ipcache"`
	Backends int      `json:"backends"`
	Clusters []uint16 `json:"clusterIDs"`
	// WaitingFor names the configured remotes that have not synced yet.
	WaitingFor []string `json:"waitingFor,omitempty"`
}

// RemoteStatus is one remote cluster as the agent sees it.
type RemoteStatus struct {
	Name          string          `json:"name"`
	ClusterID     uint32          `json:"clusterID"`
	EtcdEndpoints []string        `json:"etcdEndpoints"`
	Connected     bool            `json:"connected"`
	ConfigOK      bool            `json:"configRetrieved"`
	Ready         bool            `json:"ready"` // every kind synced since the last connect
	Synced        map[string]bool `json:"synced"`
	Nodes         int             `json:"nodes"`
	Endpoints     int             `json:"endpoints"` // ipcache entries
	Identities    int             `json:"identities"`
	Services      int             `json:"services"`
	Failures      uint64          `json:"failures"`
	LastError     string          `json:"lastError,omitempty"`
	LastErrorTime time.Time       `json:"lastErrorTime,omitzero"`
	LastEvent     time.Time       `json:"lastEvent,omitzero"`
	LastHeartbeat time.Time       `json:"lastHeartbeat,omitzero"`
	// Stale: no heartbeat for longer than the agent's heartbeat timeout.
	Stale bool `json:"stale"`
	// ConnectedSince is the start of the current (or last) connection.
	ConnectedSince time.Time `json:"connectedSince,omitzero"`
	// LastFailure is when the last session ended with an error.
	LastFailure time.Time `json:"lastFailure,omitzero"`
	// ServicesRevoked: unreachable past --remote-state-ttl, its service
	// backends were withdrawn until the next complete sync.
	ServicesRevoked bool              `json:"servicesRevoked,omitempty"`
	Rejected        map[string]uint64 `json:"rejected"` // by reason
	// EventsApplied counts entries applied per kind (lists and watches);
	// SyncSeconds is the duration of each kind's last complete list.
	EventsApplied map[string]uint64  `json:"eventsApplied"`
	SyncSeconds   map[string]float64 `json:"syncSeconds"`
	// Lists counts complete lists per kind: one per connection, plus one
	// per relist after a compacted watch.
	Lists map[string]uint64 `json:"lists"`
	// MaxListPageBytes is the largest list page read per kind (bounded by
	// the agent's page byte limit).
	MaxListPageBytes map[string]int64 `json:"maxListPageBytes,omitempty"`
	EtcdClusterID    string           `json:"etcdClusterID,omitempty"`
	// NotInForce counts what the remote published that is outside the
	// address ranges of its nodes, and so not in the datapath.
	NotInForce NotInForce `json:"notInForce"`
	// OverLimit lists the per-remote limits the remote reached.
	OverLimit []OverLimit `json:"overLimit,omitempty"`
	// Withdrawn lists the remote's services whose last update was refused:
	// their backends from this remote are out of the datapath.
	Withdrawn []WithdrawnService `json:"withdrawnServices,omitempty"`
	// StaleKeys counts, per kind, entries whose last update was refused and
	// whose previous value stays in force.
	StaleKeys map[string]int `json:"staleKeys,omitempty"`
}

// WithdrawnService is a remote's service taken out of force after a refused
// update.
type WithdrawnService struct {
	Service string `json:"service"`
	Reason  string `json:"reason"`
}

// RejectedTotal sums the rejected entries over all reasons.
func (s RemoteStatus) RejectedTotal() uint64 {
	var n uint64
	for _, v := range s.Rejected {
		n += v
	}
	return n
}

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

func (r *remote) setConnected(c wire.Cluster, etcdID uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cur = c
	r.status.Connected, r.status.ConfigOK, r.status.ClusterID = true, true, c.ID
	r.status.ConnectedSince = time.Now()
	r.status.Synced = map[string]bool{}
	r.status.EtcdClusterID = formatID(etcdID)
}

func (r *remote) setDisconnected(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.Connected, r.status.Ready = false, false
	r.status.Synced = map[string]bool{}
	if err != nil {
		r.setErrorLocked(err)
		r.status.Failures++
		r.status.LastFailure = time.Now()
	}
}

// setSynced records that kind k completed a list; once every kind has, the
// remote is ready and what a previous run left of it that it no longer
// says is pruned.
func (r *remote) setSynced(k wire.Kind) {
	r.mu.Lock()
	r.status.Synced[k.String()] = true
	ready := true
	for _, kk := range r.watchedKinds() {
		ready = ready && r.status.Synced[kk.String()]
	}
	became := ready && !r.status.Ready
	if became {
		r.status.Ready, r.status.ServicesRevoked = true, false
	}
	id := uint16(r.cur.ID)
	r.mu.Unlock()
	if !became {
		return
	}
	ips, backends := r.agent.merger.pruneCluster(id)
	nf := r.agent.merger.notInForce(r.name, id)
	r.log.Info("remote ready: every kind synced", "prunedFromPreviousRun.ipcache", ips, "prunedFromPreviousRun.backends", backends)
	if nf.Total() > 0 {
		r.log.Warn("remote publishes entries outside the address ranges of its nodes: not in force",
			"ipcacheOutsideRanges", nf.IPCacheOutside, "ipcacheClaimedByOther", nf.IPCacheClaimed, "backendsOutsideRanges", nf.BackendsOutside)
	}
	r.agent.remoteReady()
}

func (r *remote) isReady() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status.Ready
}

func (r *remote) setError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.setErrorLocked(err)
}

func (r *remote) setErrorLocked(err error) {
	r.status.LastError = err.Error()
	r.status.LastErrorTime = time.Now()
}

// rejectLogEvery bounds rejection logging to one line per reason per
// interval: a remote publishing a million bad keys must not flood the log.
const rejectLogEvery = time.Second

// reject counts and logs an entry that failed validation.
func (r *remote) reject(err error) {
	reason := rejectReason(err)
	now := time.Now()
	r.mu.Lock()
	r.status.Rejected[reason]++
	r.setErrorLocked(err)
	lim := r.rejectLog[reason]
	if lim == nil {
		lim = &rejectLimit{}
		r.rejectLog[reason] = lim
	}
	logIt, suppressed := now.Sub(lim.last) >= rejectLogEvery, lim.suppressed
	if logIt {
		lim.last, lim.suppressed = now, 0
	} else {
		lim.suppressed++
	}
	r.mu.Unlock()
	if logIt {
		r.log.Warn("rejected entry from remote", "reason", reason, "err", err, "suppressedSinceLast", suppressed)
	}
}

// rejectLimit is the log limiter of one rejection reason.
type rejectLimit struct {
	last       time.Time
	suppressed uint64
}

// staleLocked reports whether the remote's heartbeat is older than the
// timeout: the last heartbeat seen, or the connection's start if none came.
func (r *remote) staleLocked(now time.Time) bool {
	ref := r.status.LastHeartbeat
	if ref.IsZero() {
		ref = r.status.ConnectedSince
	}
	return !ref.IsZero() && now.Sub(ref) > r.agent.cfg.HeartbeatTimeout
}

// rejectReason labels a rejection for status and metrics.
func rejectReason(err error) string {
	if errors.Is(err, ErrOverlapsLocal) {
		return "overlaps_local"
	}
	if errors.Is(err, ErrOverLimit) {
		return "over_limit"
	}
	return wire.Reason(err)
}

// snapshot returns the remote's status with current counts.
func (r *remote) snapshot() RemoteStatus {
	// Kind locks come before r.mu: read the kinds first.
	counts := map[wire.Kind]int{}
	events := map[string]uint64{}
	syncs := map[string]float64{}
	lists := map[string]uint64{}
	pages := map[string]int64{}
	for _, k := range wire.Kinds {
		ks := r.kinds[k]
		counts[k] = ks.count()
		st := ks.snapshotStats()
		events[k.String()] = st.events
		syncs[k.String()] = st.lastSyncTook.Seconds()
		lists[k.String()] = st.lists
		pages[k.String()] = st.maxPageBytes
	}
	over, stale := r.overLimits(), r.staleKeys()
	svcs := r.kinds[wire.Services]
	svcs.mu.Lock()
	withdrawn := svcs.store.(*serviceStore).withdrawnServices()
	svcs.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.OverLimit, s.Withdrawn = over, withdrawn
	if len(stale) > 0 {
		s.StaleKeys = stale
	}
	s.Synced = copyMap(r.status.Synced)
	s.Rejected = copyMap(r.status.Rejected)
	s.Nodes, s.Endpoints = counts[wire.Nodes], counts[wire.IPCache]
	s.Identities, s.Services = counts[wire.Identities], counts[wire.Services]
	s.EventsApplied, s.SyncSeconds, s.Lists, s.MaxListPageBytes = events, syncs, lists, pages
	s.Stale = r.staleLocked(time.Now())
	return s
}

// selectionWarning says when a frontend's traffic is at risk: nothing
// selected, or everything selected from one remote cluster that is stale.
func (m *merger) selectionWarning(v portView) string {
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
func (m *merger) serviceStatuses() []ServiceStatus {
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
	for n, byCluster := range m.remoteSvcs {
		if _, ok := m.localSvcs[n]; ok {
			continue
		}
		s := ServiceStatus{Namespace: n.Namespace, Name: n.Name, Remote: map[string]int{}, SelectedFrom: "none",
			Warning: "exists only in remote clusters: not served until a local service of this name is annotated global"}
		for c, rs := range byCluster {
			for _, bs := range rs.backends {
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

func copyMap[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func formatID(id uint64) string { return strconv.FormatUint(id, 16) }
