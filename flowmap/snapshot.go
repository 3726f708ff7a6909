package flowmap

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// Query selects what a snapshot holds; the zero value is everything of the
// map's whole window.
type Query struct {
	// Window is how far back from the snapshot's time flows count; zero or
	// more than the map's window: the map's window.
	Window time.Duration
	// Cluster and Namespace keep the edges with an end in them.
	Cluster, Namespace string
	// Verdict keeps the edges with flows of that verdict in the window
	// (VERDICT_UNKNOWN: every edge).
	Verdict flowpb.Verdict
}

// Snapshot is the map at one time: the nodes and edges of a window, and
// the global services with the clusters that served them in it. Its lists
// are sorted by ID.
type Snapshot struct {
	Time    time.Time `json:"time"`
	Window  string    `json:"window"`
	Version uint64    `json:"version"`
	Nodes   []Node    `json:"nodes"`
	Edges   []Edge    `json:"edges"`
	// Services are the services flows were sent to, with the clusters of
	// the backends that received them.
	Services []Service `json:"services"`
	// Clusters and Namespaces are every cluster and namespace of the map's
	// nodes, whatever the query (what the page offers to pick).
	Clusters   []string `json:"clusters"`
	Namespaces []string `json:"namespaces"`
}

// Node is a workload, a pod, or a peer outside the pods (Kind*).
type Node struct {
	ID        string `json:"id"`
	Kind      string `json:"kind"`
	Cluster   string `json:"cluster,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

// Edge is the flows from one node to another's port and protocol within
// the window.
type Edge struct {
	ID          string `json:"id"`
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Port        uint32 `json:"port"`
	Protocol    string `json:"protocol"`
	// L7 is the HTTP method and path, or the DNS query, of L7 flows.
	L7 string `json:"l7,omitempty"`
	// Service is the destination service (namespace/name) of its flows.
	Service string `json:"service,omitempty"`
	Flows   uint64 `json:"flows"`
	// Rate is Flows per second of the window.
	Rate float64 `json:"rate"`
	// Verdicts counts the flows by Hubble's verdict name.
	Verdicts map[string]uint64 `json:"verdicts"`
	// DropShare is the share of Flows that were DROPPED.
	DropShare float64   `json:"dropShare"`
	LastSeen  time.Time `json:"lastSeen"`
}

// Service is a global service and the clusters that served it.
type Service struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Clusters  []string `json:"clusters"`
}

// Snapshot returns the map's edges with flows in q's window ending at now.
func (m *Map) Snapshot(now time.Time, q Query) Snapshot {
	if q.Window <= 0 || q.Window > m.cfg.Window {
		q.Window = m.cfg.Window
	}
	last := now.UnixNano() / int64(m.bucket)
	first := last - int64((q.Window+m.bucket-1)/m.bucket) + 1
	s := Snapshot{Time: now, Window: q.Window.String(), Nodes: []Node{}, Edges: []Edge{}, Services: []Service{}}
	m.mu.Lock()
	defer m.mu.Unlock()
	s.Version = m.version
	nodes := map[*node]bool{}
	for _, e := range m.edges {
		if !q.keeps(e) {
			continue
		}
		n := e.sum(first, last)
		if ed, ok := edgeOf(e, n, q); ok {
			ed.Rate = float64(ed.Flows) / q.Window.Seconds()
			s.Edges = append(s.Edges, ed)
			nodes[e.src], nodes[e.dst] = true, true
		}
	}
	for n := range nodes {
		s.Nodes = append(s.Nodes, Node{ID: n.id, Kind: n.key.kind, Cluster: n.key.cluster, Namespace: n.key.namespace, Name: n.key.name})
	}
	s.Services = m.servicesLocked(now.Add(-q.Window), q)
	s.Clusters, s.Namespaces = m.namesLocked()
	slices.SortFunc(s.Nodes, func(a, b Node) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(s.Edges, func(a, b Edge) int { return cmp.Compare(a.ID, b.ID) })
	return s
}

// keeps reports whether e is in q's cluster and namespace.
func (q *Query) keeps(e *edge) bool {
	in := func(k nodeKey) bool {
		return (q.Cluster == "" || k.cluster == q.Cluster) && (q.Namespace == "" || k.namespace == q.Namespace)
	}
	return in(e.key.src) || in(e.key.dst)
}

// edgeOf is e with counts n, if it has flows (of q's verdict).
func edgeOf(e *edge, n [numVerdicts]uint64, q Query) (Edge, bool) {
	ed := Edge{ID: e.id, Source: e.src.id, Destination: e.dst.id, Port: e.key.port, Protocol: e.key.proto,
		L7: e.key.l7, Service: e.service, LastSeen: e.last, Verdicts: map[string]uint64{}}
	for v, c := range n {
		if c > 0 {
			ed.Flows += c
			ed.Verdicts[flowpb.Verdict(v).String()] = c
		}
	}
	if ed.Flows == 0 || (q.Verdict != flowpb.Verdict_VERDICT_UNKNOWN && n[q.Verdict] == 0) {
		return Edge{}, false
	}
	ed.DropShare = float64(n[flowpb.Verdict_DROPPED]) / float64(ed.Flows)
	return ed, true
}

func (m *Map) servicesLocked(since time.Time, q Query) []Service {
	out := []Service{}
	for k, s := range m.services {
		if q.Namespace != "" && k.namespace != q.Namespace {
			continue
		}
		svc := Service{Namespace: k.namespace, Name: k.name, Clusters: []string{}}
		for c, t := range s.served {
			if !t.Before(since) {
				svc.Clusters = append(svc.Clusters, c)
			}
		}
		if len(svc.Clusters) == 0 || (q.Cluster != "" && !slices.Contains(svc.Clusters, q.Cluster)) {
			continue
		}
		slices.Sort(svc.Clusters)
		out = append(out, svc)
	}
	slices.SortFunc(out, func(a, b Service) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// namesLocked returns every cluster and namespace of the map's nodes.
func (m *Map) namesLocked() (clusters, namespaces []string) {
	cs, ns := map[string]bool{}, map[string]bool{}
	for k := range m.nodes {
		if k.cluster != "" {
			cs[k.cluster] = true
		}
		if k.namespace != "" {
			ns[k.namespace] = true
		}
	}
	clusters, namespaces = make([]string, 0, len(cs)), make([]string, 0, len(ns))
	for c := range cs {
		clusters = append(clusters, c)
	}
	for n := range ns {
		namespaces = append(namespaces, n)
	}
	slices.Sort(clusters)
	slices.Sort(namespaces)
	return clusters, namespaces
}

// Flows returns the last flows (at most n, newest first) kept for an
// edge, by its ID, or for a node, by its ID: those of its edges. The flows
// are the map's: they must not be modified.
func (m *Map) Flows(id string, n int) ([]*flowpb.Flow, error) {
	m.mu.Lock()
	var out []*flowpb.Flow
	if e := m.byID[id]; e != nil {
		out = slices.Clone(e.recent)
	} else {
		for _, e := range m.edges {
			if e.src.id == id || e.dst.id == id {
				out = append(out, e.recent...)
			}
		}
	}
	m.mu.Unlock()
	if out == nil {
		return nil, fmt.Errorf("flows of %q: %w", id, ErrNotFound)
	}
	slices.SortStableFunc(out, func(a, b *flowpb.Flow) int {
		return b.GetTime().AsTime().Compare(a.GetTime().AsTime())
	})
	return out[:min(n, len(out))], nil
}

// Dropped reports whether most of an edge's flows were dropped: the
// color of a drop.
func (e Edge) Dropped() bool { return e.DropShare >= 0.5 }

// String is the edge as a line: "SRC -> DST PORT/PROTO".
func (e Edge) String() string { return strings.TrimSpace(e.ID) }
