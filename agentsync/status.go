package agentsync

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/clustermesh/clustermesh/merge"
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
	NotInForce merge.NotInForce `json:"notInForce"`
	// OverLimit lists the per-remote limits the remote reached.
	OverLimit []OverLimit `json:"overLimit,omitempty"`
	// Withdrawn lists the remote's services whose last update was refused:
	// their backends from this remote are out of the datapath.
	Withdrawn []WithdrawnService `json:"withdrawnServices,omitempty"`
	// StaleKeys counts, per kind, entries whose last update was refused and
	// whose previous value stays in force.
	StaleKeys map[string]int `json:"staleKeys,omitempty"`
	// Unsupported names what the remote publishes that this agent does
	// not read, and why (endpoint slices: see exports.go).
	Unsupported []UnsupportedKind `json:"unsupported,omitempty"`
	// ViaCache: the remote is read through a kvstoremesh cache in this
	// cluster's etcd (its cluster config says cached), and this is the
	// cache's session with it. Connected and Ready then hold only while
	// the cache's do too; LastHeartbeat (and so Stale) is the remote's
	// heartbeat as the cache last read it.
	ViaCache *ViaCache `json:"viaCache,omitempty"`
	// LocalView: this is the local cluster's own apiserver, and its
	// identities and ipcache are read from its local view — every local
	// endpoint, also those its export mode holds back from peers
	// (wire.LocalViewPrefix) — rather than from the scoped state.
	LocalView bool `json:"localView,omitempty"`
}

// UnsupportedKind is a kind of entry a remote publishes and the agent does
// not read.
type UnsupportedKind struct {
	Kind   string `json:"kind"`
	Reason string `json:"reason"`
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

// ServiceStatus is one global service of the local cluster as the merge
// selected its backends.
type ServiceStatus = merge.ServiceStatus

func (r *remote) setConnected(c wire.Cluster, etcdID uint64, lay layout) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cur = c
	r.status.LocalView = lay.local
	r.status.ViaCache = nil // set by the probe, from the cache's status
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
	ips, backends := r.agent.merger.PruneCluster(id)
	nf := r.agent.merger.NotInForce(r.name, id)
	r.log.Info("remote ready: every kind synced", "prunedFromPreviousRun.ipcache", ips, "prunedFromPreviousRun.backends", backends)
	if nf.Total() > 0 {
		r.log.Warn("remote publishes entries outside the address ranges of its nodes: not in force",
			"ipcacheOutsideRanges", nf.IPCacheOutside, "ipcacheClaimedByOther", nf.IPCacheClaimed, "backendsOutsideRanges", nf.BackendsOutside)
	}
	r.agent.remoteReady()
}

// setViaCache records the cache's status of the remote (kvs: the answer
// for CacheStatusKey). A cache that writes none (Cilium's KVStoreMesh)
// leaves the remote's status the agent's session's alone.
func (r *remote) setViaCache(kvs []*mvccpb.KeyValue) {
	if len(kvs) != 1 {
		r.mu.Lock()
		r.status.ViaCache = nil
		r.mu.Unlock()
		return
	}
	var cs CacheStatus
	if err := json.Unmarshal(kvs[0].Value, &cs); err != nil {
		r.reject(fmt.Errorf("the cache's status of remote %s: %w: %w", r.name, wire.ErrMalformedValue, err))
		return
	}
	vc := ViaCache{CacheStatus: cs, CacheDown: time.Since(cs.Updated) > 3*CacheStatusInterval}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.ViaCache = &vc
	if !vc.LastHeartbeat.IsZero() {
		r.status.LastHeartbeat = vc.LastHeartbeat
	}
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
	r.mu.Lock()
	r.status.Rejected[reason]++
	r.setErrorLocked(err)
	logIt, suppressed := r.rejectLog.Allow(reason, time.Now())
	r.mu.Unlock()
	if logIt {
		r.log.Warn("rejected entry from remote", "reason", reason, "err", err, "suppressedSinceLast", suppressed)
	}
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

// snapshot returns the remote's status with current counts. Ready and
// Synced are as they were before the counts were read: a kind's list
// completes before it is marked synced, so a snapshot that says ready
// counts everything the sync listed (read after, a kind could be counted
// mid-list and then reported synced: "ready" with none of its entries).
func (r *remote) snapshot() RemoteStatus {
	r.mu.Lock()
	readyBefore, syncedBefore := r.status.Ready, copyMap(r.status.Synced)
	r.mu.Unlock()
	// Kind locks come before r.mu: read the kinds without it.
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
	if r.countedHook != nil {
		r.countedHook()
	}
	over, stale := r.overLimits(), r.staleKeys()
	svcs := r.kinds[wire.Services]
	var withdrawn []WithdrawnService
	svcs.mu.Lock()
	if ss, ok := svcs.store.(*serviceStore); ok {
		withdrawn = ss.withdrawnServices()
	}
	svcs.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.OverLimit, s.Withdrawn = over, withdrawn
	if len(stale) > 0 {
		s.StaleKeys = stale
	}
	s.Ready, s.Synced = s.Ready && readyBefore, syncedBefore
	s.Rejected = copyMap(r.status.Rejected)
	s.Nodes, s.Endpoints = counts[wire.Nodes], counts[wire.IPCache]
	s.Identities, s.Services = counts[wire.Identities], counts[wire.Services]
	s.EventsApplied, s.SyncSeconds, s.Lists, s.MaxListPageBytes = events, syncs, lists, pages
	s.Stale = r.staleLocked(time.Now())
	if vc := r.status.ViaCache; vc != nil {
		cp := *vc
		s.ViaCache = &cp
		s.Connected = s.Connected && vc.Connected && !vc.CacheDown
		s.Ready = s.Ready && vc.Ready
	}
	return s
}

func copyMap[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func formatID(id uint64) string { return strconv.FormatUint(id, 16) }
