// Package policy owns cross-cluster network policy: the CiliumNetworkPolicy
// and Kubernetes NetworkPolicy documents it reads, label selectors evaluated
// against security identities (whose labels carry the cluster,
// io.cilium.k8s.policy.cluster), and the computation of what each local
// endpoint may talk to: per endpoint, the allowed (peer identity, port range,
// protocol, direction), with the L7 policy (HTTP or DNS rules) of the
// entries whose traffic a proxy judges, and the FQDN selectors (toFQDNs) whose
// addresses the agent turns into identities. It knows nothing of etcd or
// eBPF: the agent feeds it identities and writes its result into the
// datapath.
package policy

// CiliumNetworkPolicy is the subset of cilium.io/v2 CiliumNetworkPolicy the
// mesh enforces.
type CiliumNetworkPolicy struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   Metadata `json:"metadata"`
	Spec       *Rule    `json:"spec,omitempty"`
	Specs      []Rule   `json:"specs,omitempty"`
}

// Metadata names a policy; its namespace scopes its selectors.
type Metadata struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
}

// Rule selects endpoints and says which peers they accept and reach.
type Rule struct {
	EndpointSelector Selector      `json:"endpointSelector"`
	Ingress          []IngressRule `json:"ingress,omitempty"`
	Egress           []EgressRule  `json:"egress,omitempty"`
}

// IngressRule allows traffic from the selected peers on the given ports
// (any port when there is none).
type IngressRule struct {
	FromEndpoints []Selector `json:"fromEndpoints,omitempty"`
	ToPorts       []PortRule `json:"toPorts,omitempty"`
}

// EgressRule allows traffic to the selected peers on the given ports:
// endpoints (toEndpoints) or the addresses DNS answers gave for names
// (toFQDNs), not both in one rule.
type EgressRule struct {
	ToEndpoints []Selector     `json:"toEndpoints,omitempty"`
	ToFQDNs     []FQDNSelector `json:"toFQDNs,omitempty"`
	ToPorts     []PortRule     `json:"toPorts,omitempty"`
}

// PortRule lists ports, and optionally the L7 rules their traffic is
// held to (which send it through the agent's proxy).
type PortRule struct {
	Ports []PortProtocol `json:"ports"`
	Rules *L7Rules       `json:"rules,omitempty"`
}

// PortProtocol is a port (or a range with EndPort) and a protocol (ANY when
// empty).
type PortProtocol struct {
	Port     string `json:"port"`
	EndPort  int    `json:"endPort,omitempty"`
	Protocol string `json:"protocol,omitempty"`
}

// Selector is a Kubernetes label selector. An empty selector selects
// everything (in the policy's namespace, and by default in the local cluster).
type Selector struct {
	MatchLabels      map[string]string `json:"matchLabels,omitempty"`
	MatchExpressions []Requirement     `json:"matchExpressions,omitempty"`
}

// Requirement is one match expression: In, NotIn, Exists or DoesNotExist.
type Requirement struct {
	Key      string   `json:"key"`
	Operator string   `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// NetworkPolicy is the subset of networking.k8s.io/v1 NetworkPolicy the mesh
// enforces.
type NetworkPolicy struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   Metadata          `json:"metadata"`
	Spec       NetworkPolicySpec `json:"spec"`
}

// NetworkPolicySpec selects pods and lists allowed peers.
type NetworkPolicySpec struct {
	PodSelector Selector            `json:"podSelector"`
	PolicyTypes []string            `json:"policyTypes,omitempty"`
	Ingress     []NetworkPolicyRule `json:"ingress,omitempty"`
	Egress      []NetworkPolicyRule `json:"egress,omitempty"`
}

// NetworkPolicyRule is one ingress (from) or egress (to) rule.
type NetworkPolicyRule struct {
	From  []NetworkPolicyPeer `json:"from,omitempty"`
	To    []NetworkPolicyPeer `json:"to,omitempty"`
	Ports []NetworkPolicyPort `json:"ports,omitempty"`
}

// NetworkPolicyPeer selects pods, namespaces, or pods in namespaces.
type NetworkPolicyPeer struct {
	PodSelector       *Selector `json:"podSelector,omitempty"`
	NamespaceSelector *Selector `json:"namespaceSelector,omitempty"`
}

// NetworkPolicyPort is a port (number; named ports are not supported) and
// protocol.
type NetworkPolicyPort struct {
	Protocol string `json:"protocol,omitempty"`
	Port     *int   `json:"port,omitempty"`
	EndPort  *int   `json:"endPort,omitempty"`
}
