// Package statesource owns a cluster's desired local state — its nodes, its
// endpoints (pods) and its services — and the sources it is read from. Today
// that is a YAML file re-read when it changes; a Kubernetes source delivers the
// same State. The mesh apiserver publishes a State to its cluster's etcd; the
// agent reads the local cluster's services and endpoints from the same source,
// as Cilium's agent reads them from Kubernetes.
package statesource

import (
	"context"
	"net/netip"
	"strings"

	"github.com/clustermesh/clustermesh/wire"
)

// Source delivers a cluster's state: once when it is first read and again
// after every change, until ctx is done. onChange is called from one goroutine
// at a time and must not keep the State past the next call; a State is never
// modified after it is delivered. Run's error names what failed (`reading
// state file "east.yaml": ...`), so that a caller can return it as it is.
type Source interface {
	Run(ctx context.Context, onChange func(*State)) error
}

// State is a cluster's local state at one moment.
type State struct {
	Nodes []Node `json:"nodes"`
	// Endpoints are pointers so that successive States of one source share
	// the endpoints that did not change (an edit of one endpoint in a
	// cluster of 100,000 copies pointers, not endpoints): an Endpoint, like
	// its State, is never modified once delivered.
	Endpoints []*Endpoint `json:"endpoints"`
	Services  []Service   `json:"services"`
	// Namespaces carry the labels of namespaces (optional; a namespace not
	// listed has none). Parse copies them to each endpoint's
	// NamespaceLabels; a source that builds a State fills those itself.
	Namespaces []Namespace `json:"namespaces,omitempty"`

	// Changes, when set, is what changed from the State the same source
	// delivered before this one; nil: anything may have.
	Changes *Changes `json:"-"`
}

// Changes is what a State changed from the one its source delivered before
// it, when the source knows: the file source, when an edit of the state file
// touched only its endpoints. Consumers may then recompute only what the
// changed endpoints touch, without walking the State.
type Changes struct {
	// Endpoints are the endpoints added or changed: the State's own (a
	// key appears at most once); RemovedEndpoints are the keys
	// ("namespace/pod", Endpoint.Key) of those that went.
	Endpoints        []*Endpoint
	RemovedEndpoints []string
	// Nodes, Services and Namespaces report whether those may have
	// changed.
	Nodes, Services, Namespaces bool
}

// Then is what changed from the State before c to the State after next,
// when next follows c before c was consumed: nil when either may have
// changed anything. Of an endpoint both name, next's word is the last.
func (c *Changes) Then(next *Changes) *Changes {
	if c == nil || next == nil {
		return nil
	}
	out := &Changes{Nodes: c.Nodes || next.Nodes, Services: c.Services || next.Services,
		Namespaces: c.Namespaces || next.Namespaces}
	touched := make(map[string]bool, len(next.Endpoints)+len(next.RemovedEndpoints))
	for _, e := range next.Endpoints {
		touched[e.Key()] = true
	}
	for _, k := range next.RemovedEndpoints {
		touched[k] = true
	}
	for _, e := range c.Endpoints {
		if !touched[e.Key()] {
			out.Endpoints = append(out.Endpoints, e)
		}
	}
	for _, k := range c.RemovedEndpoints {
		if !touched[k] {
			out.RemovedEndpoints = append(out.RemovedEndpoints, k)
		}
	}
	out.Endpoints = append(out.Endpoints, next.Endpoints...)
	out.RemovedEndpoints = append(out.RemovedEndpoints, next.RemovedEndpoints...)
	return out
}

// Namespace is a namespace's name and labels.
type Namespace struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Labels Cilium adds to every pod's identity, besides the namespace and the
// cluster (pkg/k8s/apis/cilium.io/const.go: PolicyLabelServiceAccount,
// PodNamespaceMetaLabelsPrefix; all of source k8s).
const (
	ServiceAccountLabel  = "io.cilium.k8s.policy.serviceaccount"
	NamespaceLabelPrefix = "io.cilium.k8s.namespace.labels."
	// ciliumLabelPrefix marks labels only Cilium sets: a pod's own labels
	// with it are dropped (pkg/k8s/utils/utils.go: RemoveCiliumLabels), so
	// that a pod cannot claim another service account or namespace.
	ciliumLabelPrefix = "io.cilium.k8s"
)

// Node is a machine of the cluster.
type Node struct {
	Name string       `json:"name"`
	IPs  []netip.Addr `json:"ips"` // the first is the node's InternalIP (tunnel endpoint)
	// PodCIDRs are the prefixes pods on this node get addresses from.
	PodCIDRs        []netip.Prefix `json:"podCIDRs"`
	WireguardPubKey string         `json:"wireguardPubKey,omitempty"`
	// Annotations are published on the node's entry (optional), e.g.
	// wire.AnnotationHubbleAddress: where its agent serves the Observer API.
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Endpoint is a pod: its address, labels, node and readiness.
type Endpoint struct {
	Namespace string            `json:"namespace"`
	Pod       string            `json:"pod"`
	IP        netip.Addr        `json:"ip"`
	Node      string            `json:"node"`
	Labels    map[string]string `json:"labels"`
	// Ready is the pod's readiness (default true).
	Ready *bool `json:"ready,omitempty"`
	// Serving is true while a terminating pod still serves (default: Ready).
	Serving *bool `json:"serving,omitempty"`
	// Interface is the host-side end of the pod's veth on its node: the
	// node's agent attaches the policy programs there. Empty: the pod's
	// policy is computed but not enforced on this node.
	Interface string `json:"interface,omitempty"`
	// ServiceAccount is the pod's service account (optional).
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// Workload is the pod's owning workload, "Kind/name"
	// (Deployment/frontend; optional): published with its ipcache entry,
	// it names the pod's workload in the flows of every cluster.
	Workload string `json:"workload,omitempty"`
	// Zone is the endpoint's topology zone (its EndpointSlice endpoint's
	// zone, or its node's topology.kubernetes.io/zone label), ForZones the
	// zones its topology hints name, Hostname its EndpointSlice hostname:
	// published as Cilium's ClusterService zones and hostnames (optional).
	Zone     string   `json:"zone,omitempty"`
	ForZones []string `json:"forZones,omitempty"`
	Hostname string   `json:"hostname,omitempty"`
	// NamespaceLabels are the labels of the pod's namespace: in a state
	// file they come from its namespaces list, never from the endpoint.
	NamespaceLabels map[string]string `json:"-"`
}

// IdentityLabels are the labels of the endpoint's security identity in
// cluster, all of source k8s, as Cilium builds them (SanitizePodLabels in
// pkg/k8s/utils/utils.go): its pod labels but those with Cilium's prefix,
// one io.cilium.k8s.namespace.labels.<key> per label of its namespace, its
// namespace, its service account when it has one, and its cluster. Pods
// with equal labels share an identity.
func (e *Endpoint) IdentityLabels(cluster string) wire.Labels {
	m := make(map[string]string, len(e.Labels)+len(e.NamespaceLabels)+3)
	for k, v := range e.Labels {
		if !strings.HasPrefix(k, ciliumLabelPrefix) {
			m[k] = v
		}
	}
	for k, v := range e.NamespaceLabels {
		m[NamespaceLabelPrefix+k] = v
	}
	m[wire.NamespaceLabel] = e.Namespace
	if e.ServiceAccount != "" {
		m[ServiceAccountLabel] = e.ServiceAccount
	}
	m[wire.ClusterLabel] = cluster
	return wire.NewLabels("k8s", m)
}

// IsReady reports the endpoint's readiness (true when unset).
func (e *Endpoint) IsReady() bool { return e.Ready == nil || *e.Ready }

// IsServing reports whether the endpoint can take traffic: ready, or
// terminating but still serving.
func (e *Endpoint) IsServing() bool {
	if e.Serving != nil {
		return *e.Serving
	}
	return e.IsReady()
}

// Service is a Kubernetes-style service.
type Service struct {
	Namespace   string            `json:"namespace"`
	Name        string            `json:"name"`
	ClusterIP   netip.Addr        `json:"clusterIP"` // zero for a headless service
	Ports       []ServicePort     `json:"ports"`
	Selector    map[string]string `json:"selector"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// Export is the service's MCS API ServiceExport, when it has one
	// (export.go): its spec is published, and it makes the service global.
	Export *Export `json:"export,omitempty"`
}

// ServicePort is one port of a service; TargetPort defaults to Port.
type ServicePort struct {
	Name       string `json:"name"`
	Port       uint16 `json:"port"`
	TargetPort uint16 `json:"targetPort,omitempty"`
	Protocol   string `json:"protocol,omitempty"` // TCP (default), UDP, SCTP
}

// Target returns the backend port.
func (p ServicePort) Target() uint16 {
	if p.TargetPort != 0 {
		return p.TargetPort
	}
	return p.Port
}

// Proto returns the protocol, TCP when unset.
func (p ServicePort) Proto() string {
	if p.Protocol == "" {
		return "TCP"
	}
	return strings.ToUpper(p.Protocol)
}

// Global reports whether the service is global: annotated
// service.cilium.io/global: "true", or exported through the MCS API (Export).
func (s *Service) Global() bool {
	return s.Export != nil || strings.EqualFold(s.Annotations[wire.AnnotationGlobal], "true")
}

// Shared reports whether a global service exports its backends (the default).
func (s *Service) Shared() bool {
	return s.Global() && !strings.EqualFold(s.Annotations[wire.AnnotationShared], "false")
}

// Affinity returns service.cilium.io/affinity: local, remote or none (the
// default, also for an unknown value, which Validate reports).
func (s *Service) Affinity() string {
	switch a := strings.ToLower(s.Annotations[wire.AnnotationAffinity]); a {
	case wire.AffinityLocal, wire.AffinityRemote:
		return a
	}
	return wire.AffinityNone
}

// Selects reports whether the service selects e: same namespace and every
// selector label present with the same value. A service without selector
// selects nothing.
func (s *Service) Selects(e *Endpoint) bool {
	if e.Namespace != s.Namespace || len(s.Selector) == 0 {
		return false
	}
	for k, v := range s.Selector {
		if e.Labels[k] != v {
			return false
		}
	}
	return true
}

// Backends returns the endpoints s selects that have an address, in the
// state's order. For many services, use a SelectorIndex.
func (st *State) Backends(s *Service) []*Endpoint {
	var out []*Endpoint
	for _, e := range st.Endpoints {
		if e.IP.IsValid() && s.Selects(e) {
			out = append(out, e)
		}
	}
	return out
}

// SelectorIndex finds the endpoints a service selects without scanning every
// endpoint: endpoints are indexed by namespace and each label, and a
// selector walks the list of one of its labels.
type SelectorIndex struct {
	st      *State
	byLabel map[labelKey][]int32 // endpoint indices, in state order
}

type labelKey struct{ namespace, key, value string }

// NewSelectorIndex indexes st's endpoints; st must not change afterwards.
func NewSelectorIndex(st *State) *SelectorIndex {
	ix := &SelectorIndex{st: st, byLabel: map[labelKey][]int32{}}
	for i, e := range st.Endpoints {
		for k, v := range e.Labels {
			lk := labelKey{e.Namespace, k, v}
			ix.byLabel[lk] = append(ix.byLabel[lk], int32(i))
		}
	}
	return ix
}

// Backends is State.Backends through the index.
func (ix *SelectorIndex) Backends(s *Service) []*Endpoint {
	var shortest []int32
	first := true
	for k, v := range s.Selector {
		l := ix.byLabel[labelKey{s.Namespace, k, v}]
		if first || len(l) < len(shortest) {
			shortest, first = l, false
		}
	}
	var out []*Endpoint
	for _, i := range shortest {
		e := ix.st.Endpoints[i]
		if e.IP.IsValid() && s.Selects(e) {
			out = append(out, e)
		}
	}
	return out
}
