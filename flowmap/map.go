// Package flowmap owns the service map of a mesh: Hubble's flows (the
// GetFlows responses of an agent or of the relay) aggregated into workloads
// as nodes, grouped by cluster and namespace, and edges between them per
// destination port, protocol and L7 label, counted by verdict over a sliding
// window; the global services flows were sent to and the clusters that
// served them; the last flows of each edge. A Map keeps nothing but this
// aggregate (and a few flows per edge); Snapshot is its data, written as
// JSON or DOT.
package flowmap

import (
	"errors"
	"sync"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
)

// Defaults of Config.
const (
	DefaultWindow       = 5 * time.Minute
	DefaultBuckets      = 30
	DefaultFlowsPerEdge = 10
	DefaultMaxEdges     = 20000
)

// The errors of this package.
var (
	// ErrNotFound: no edge or node has the ID asked for (it may have left
	// the window).
	ErrNotFound = errors.New("no such edge or node in the map")
)

// Config configures a Map; the zero value works.
type Config struct {
	// Window is the longest window a snapshot may ask for: counts older
	// than that are forgotten (default 5m).
	Window time.Duration
	// Buckets is how many slices the window is counted in (default 30):
	// a snapshot's window is rounded up to a slice.
	Buckets int
	// FlowsPerEdge is how many of an edge's last flows are kept (default 10).
	FlowsPerEdge int
	// MaxEdges bounds the edges held (default 20,000); flows of further
	// edges are counted in Stats.Overflow and left out.
	MaxEdges int
}

// numVerdicts is one past the highest flowpb.Verdict counted.
const numVerdicts = int(flowpb.Verdict_TRANSLATED) + 1

// Map is the aggregate. Every method is safe for concurrent use.
type Map struct {
	cfg    Config
	bucket time.Duration

	mu        sync.Mutex
	nodes     map[nodeKey]*node   // guarded by mu
	edges     map[edgeKey]*edge   // guarded by mu
	byID      map[string]*edge    // guarded by mu
	services  map[svcKey]*service // guarded by mu
	version   uint64              // guarded by mu: one more per change
	lastPrune int64               // guarded by mu: the bucket epoch of the last prune
	stats     Stats               // guarded by mu
}

// Stats are a map's counts since it was made.
type Stats struct {
	// Flows is how many flows were added to an edge.
	Flows uint64 `json:"flows"`
	// Skipped is how many flows had an end with nothing to name it by
	// (no pod, identity or address), or were not flows.
	Skipped uint64 `json:"skipped"`
	// Overflow is how many flows were left out because the map held
	// MaxEdges edges.
	Overflow uint64 `json:"overflow"`
}

// New returns an empty map.
func New(cfg Config) *Map {
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.Buckets <= 0 {
		cfg.Buckets = DefaultBuckets
	}
	if cfg.FlowsPerEdge <= 0 {
		cfg.FlowsPerEdge = DefaultFlowsPerEdge
	}
	if cfg.MaxEdges <= 0 {
		cfg.MaxEdges = DefaultMaxEdges
	}
	return &Map{
		cfg: cfg, bucket: max(cfg.Window/time.Duration(cfg.Buckets), time.Millisecond),
		nodes: map[nodeKey]*node{}, edges: map[edgeKey]*edge{}, byID: map[string]*edge{}, services: map[svcKey]*service{},
	}
}

// Window is the longest window of the map's snapshots.
func (m *Map) Window() time.Duration { return m.cfg.Window }

// AddResponse adds the flow of a GetFlows response; other events (lost
// events, node status) are ignored. It reports whether the map changed.
func (m *Map) AddResponse(r *observerpb.GetFlowsResponse) bool {
	f := r.GetFlow()
	if f == nil {
		return false
	}
	return m.Add(f)
}

// Add adds one flow, at its own time, and reports whether the map changed.
// The map keeps f among its edge's last flows: f must not be modified
// afterwards.
func (m *Map) Add(f *flowpb.Flow) bool {
	k, ok := keyOf(f)
	m.mu.Lock()
	defer m.mu.Unlock()
	if !ok {
		m.stats.Skipped++
		return false
	}
	t := f.GetTime().AsTime()
	if f.GetTime() == nil {
		t = time.Now()
	}
	epoch := t.UnixNano() / int64(m.bucket)
	if epoch > m.lastPrune {
		m.pruneLocked(t)
		m.lastPrune = epoch
	}
	e := m.edges[k]
	if e == nil {
		if len(m.edges) >= m.cfg.MaxEdges {
			m.stats.Overflow++
			return false
		}
		e = m.newEdgeLocked(k, f)
	}
	e.add(f, t, epoch, m.cfg.FlowsPerEdge)
	if svc := f.GetDestinationService(); svc.GetName() != "" && k.dst.isPod() {
		m.serviceLocked(svc, k.dst.cluster, t)
	}
	m.stats.Flows++
	m.version++
	return true
}

func (m *Map) newEdgeLocked(k edgeKey, f *flowpb.Flow) *edge {
	for _, nk := range []nodeKey{k.src, k.dst} {
		if m.nodes[nk] == nil {
			m.nodes[nk] = &node{key: nk, id: nk.id()}
		}
	}
	e := &edge{key: k, src: m.nodes[k.src], dst: m.nodes[k.dst], counts: make([]bucketCounts, m.cfg.Buckets)}
	e.id = k.id(e.src.id, e.dst.id)
	if svc := f.GetDestinationService(); svc.GetName() != "" {
		e.service = svc.GetNamespace() + "/" + svc.GetName()
	}
	m.edges[k] = e
	m.byID[e.id] = e
	return e
}

func (m *Map) serviceLocked(svc *flowpb.Service, cluster string, t time.Time) {
	sk := svcKey{namespace: svc.GetNamespace(), name: svc.GetName()}
	s := m.services[sk]
	if s == nil {
		s = &service{served: map[string]time.Time{}}
		m.services[sk] = s
	}
	if cluster != "" && t.After(s.served[cluster]) {
		s.served[cluster] = t
	}
}

// pruneLocked forgets edges, nodes and services' clusters last seen before
// the map's window ending at now.
func (m *Map) pruneLocked(now time.Time) {
	old := now.Add(-m.cfg.Window - m.bucket)
	for k, e := range m.edges {
		if e.last.Before(old) {
			delete(m.edges, k)
			delete(m.byID, e.id)
			m.version++
		}
	}
	used := make(map[nodeKey]bool, len(m.nodes))
	for k := range m.edges {
		used[k.src], used[k.dst] = true, true
	}
	for k := range m.nodes {
		if !used[k] {
			delete(m.nodes, k)
		}
	}
	for k, s := range m.services {
		for c, t := range s.served {
			if t.Before(old) {
				delete(s.served, c)
			}
		}
		if len(s.served) == 0 {
			delete(m.services, k)
		}
	}
}

// Stats returns the map's counts.
func (m *Map) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}

// Version changes whenever the map does: a snapshot of the same version
// is the same but for its rates' ageing.
func (m *Map) Version() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.version
}
