package policy

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/wire"
)

// Direction of traffic relative to the endpoint a policy selects.
type Direction uint8

// The two directions.
const (
	Ingress Direction = iota
	Egress
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Protocol numbers of a port range; AnyProtocol matches every protocol.
const (
	AnyProtocol uint8 = 0
	TCP         uint8 = 6
	UDP         uint8 = 17
	SCTP        uint8 = 132
)

// PortRange is a protocol and an inclusive port range; From 0 means every
// port.
type PortRange struct {
	Protocol uint8
	From, To uint16
}

// Options of compilation.
type Options struct {
	// LocalCluster is the cluster the agent runs in.
	LocalCluster string
	// DefaultLocalCluster: a peer selector without the cluster label selects
	// only the local cluster (Cilium's default since 1.19). When false, it
	// selects matching peers in every cluster.
	DefaultLocalCluster bool
	// AllowFromHost: an endpoint selected for ingress still accepts
	// everything from its own node (the host identity: kubelet probes,
	// connections the node's socket load balancer sends), as Cilium does
	// by default.
	AllowFromHost bool
}

// compiledRule is one direction of one rule, ready to evaluate: the local
// endpoints it applies to, the peers it allows (nil: every peer) and on
// which ports (none: every port).
type compiledRule struct {
	origin  string // file and policy, for messages
	subject selector
	dir     Direction
	peers   []selector
	anyPeer bool
	ports   []PortRange
	// l7 is the L7 policy of each port (nil when no port has one; a nil
	// entry: plain L3/L4).
	l7 []*L7Policy
	// fqdns are the patterns of the rule's toFQDNs, also in peers.
	fqdns []string
	// implicit: added by an option (AllowFromHost), not written by anyone.
	implicit bool
}

// Compiled is the rules of a set of policy documents.
type Compiled struct {
	rules []compiledRule
}

// Rules is the number of compiled rule directions (the implicit ones
// options add not counted).
func (c *Compiled) Rules() int {
	n := 0
	for _, r := range c.rules {
		if !r.implicit {
			n++
		}
	}
	return n
}

// Merge adds o's rules to c.
func (c *Compiled) Merge(o *Compiled) { c.rules = append(c.rules, o.rules...) }

// Parse compiles the documents of one file's content (name labels errors).
func Parse(o Options, name string, b []byte) (*Compiled, error) {
	c := &Compiled{}
	if err := c.add(o, name, b); err != nil {
		return c, err
	}
	if err := CheckL7Conflicts(c); err != nil {
		return c, fmt.Errorf("compiling %s: %w", name, err)
	}
	return c, nil
}

func (c *Compiled) add(o Options, name string, b []byte) error {
	for i, doc := range splitDocuments(b) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		where := fmt.Sprintf("%s (document %d)", name, i+1)
		var head struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return fmt.Errorf("parsing %s: %w: %w", where, ErrInvalidPolicy, err)
		}
		var rules []compiledRule
		var err error
		switch head.Kind {
		case "CiliumNetworkPolicy":
			var p CiliumNetworkPolicy
			if err := yaml.UnmarshalStrict(doc, &p); err != nil {
				return fmt.Errorf("parsing %s: %w: %w", where, ErrInvalidPolicy, err)
			}
			rules, err = compileCNP(o, where, &p)
		case "NetworkPolicy":
			var p NetworkPolicy
			if err := yaml.UnmarshalStrict(doc, &p); err != nil {
				return fmt.Errorf("parsing %s: %w: %w", where, ErrInvalidPolicy, err)
			}
			rules, err = compileNP(o, where, &p)
		default:
			return fmt.Errorf("parsing %s: kind: %w: %q (want CiliumNetworkPolicy or NetworkPolicy)", where, ErrInvalidPolicy, head.Kind)
		}
		if err != nil {
			return fmt.Errorf("compiling %s: %w", where, err)
		}
		if o.AllowFromHost {
			rules = withHostRules(rules)
		}
		c.rules = append(c.rules, rules...)
	}
	return nil
}

// splitDocuments splits a YAML stream at its "---" lines.
func splitDocuments(b []byte) [][]byte {
	return bytes.Split(append([]byte("\n"), b...), []byte("\n---"))
}

func nsRequirement(ns string) requirement {
	return requirement{source: "k8s", key: NamespaceLabel, op: OpIn, values: []string{ns}}
}

func clusterRequirement(c string) requirement {
	return requirement{source: "k8s", key: wire.ClusterLabel, op: OpIn, values: []string{c}}
}

// scopePeer applies the implicit constraints of a peer selector: the
// policy's namespace unless the selector names a namespace, and the local
// cluster unless it names a cluster (with DefaultLocalCluster).
func scopePeer(o Options, s selector, ns string) selector {
	if ns != "" && !s.mentions(NamespaceLabel) {
		s = s.with(nsRequirement(ns))
	}
	if o.DefaultLocalCluster && !s.mentions(wire.ClusterLabel) {
		s = s.with(clusterRequirement(o.LocalCluster))
	}
	return s
}

func compileCNP(o Options, where string, p *CiliumNetworkPolicy) ([]compiledRule, error) {
	specs := p.Specs
	if p.Spec != nil {
		specs = append([]Rule{*p.Spec}, specs...)
	}
	if len(specs) == 0 {
		return nil, fmt.Errorf("spec: %w: no spec or specs", ErrInvalidPolicy)
	}
	origin := where + " " + p.Metadata.Namespace + "/" + p.Metadata.Name
	var out []compiledRule
	for si, r := range specs {
		field := "spec"
		if p.Spec == nil || si > 0 {
			field = fmt.Sprintf("specs[%d]", si-boolInt(p.Spec != nil))
		}
		subject, err := compileSelector(r.EndpointSelector, field+".endpointSelector")
		if err != nil {
			return nil, err
		}
		if p.Metadata.Namespace != "" {
			subject = subject.with(nsRequirement(p.Metadata.Namespace))
		}
		subject = subject.with(clusterRequirement(o.LocalCluster)) // rules apply to local endpoints
		for i, in := range r.Ingress {
			cr, err := compileDirection(o, origin, subject, Ingress, in.FromEndpoints, nil, in.ToPorts, p.Metadata.Namespace,
				fmt.Sprintf("%s.ingress[%d]", field, i), "fromEndpoints")
			if err != nil {
				return nil, err
			}
			out = append(out, cr)
		}
		for i, eg := range r.Egress {
			cr, err := compileDirection(o, origin, subject, Egress, eg.ToEndpoints, eg.ToFQDNs, eg.ToPorts, p.Metadata.Namespace,
				fmt.Sprintf("%s.egress[%d]", field, i), "toEndpoints")
			if err != nil {
				return nil, err
			}
			out = append(out, cr)
		}
		if r.Ingress == nil && r.Egress == nil {
			return nil, fmt.Errorf("%s: %w: neither ingress nor egress", field, ErrInvalidPolicy)
		}
	}
	return out, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func compileDirection(o Options, origin string, subject selector, dir Direction, peers []Selector, fqdns []FQDNSelector,
	ports []PortRule, ns, field, peerField string) (compiledRule, error) {
	cr := compiledRule{origin: origin, subject: subject, dir: dir, anyPeer: peers == nil && fqdns == nil}
	if len(peers) > 0 && len(fqdns) > 0 {
		return cr, fmt.Errorf("%s: %w: toEndpoints and toFQDNs in one rule (write two egress rules)", field, ErrInvalidPolicy)
	}
	for j, ps := range peers {
		s, err := compileSelector(ps, fmt.Sprintf("%s.%s[%d]", field, peerField, j))
		if err != nil {
			return cr, err
		}
		cr.peers = append(cr.peers, scopePeer(o, s, ns))
	}
	for j, f := range fqdns {
		if err := checkName(f.MatchName, f.MatchPattern, fmt.Sprintf("%s.toFQDNs[%d]", field, j)); err != nil {
			return cr, err
		}
		pattern := FQDNPattern(f.MatchName, f.MatchPattern)
		cr.fqdns = append(cr.fqdns, pattern)
		cr.peers = append(cr.peers, fqdnSelector(pattern))
	}
	for j, pr := range ports {
		ranges, l7, err := compilePortRule(pr, dir, fmt.Sprintf("%s.toPorts[%d]", field, j))
		if err != nil {
			return cr, err
		}
		for _, r := range ranges {
			cr.ports = append(cr.ports, r)
			cr.l7 = append(cr.l7, l7)
		}
	}
	if !slices.ContainsFunc(cr.l7, func(p *L7Policy) bool { return p != nil }) {
		cr.l7 = nil
	}
	return cr, nil
}

func compilePort(port string, endPort int, proto, field string) (PortRange, error) {
	var r PortRange
	switch strings.ToUpper(proto) {
	case "", "ANY":
		r.Protocol = AnyProtocol
	case "TCP":
		r.Protocol = TCP
	case "UDP":
		r.Protocol = UDP
	case "SCTP":
		r.Protocol = SCTP
	default:
		return r, fmt.Errorf("%s.protocol: %w: %q (want TCP, UDP, SCTP or ANY)", field, ErrInvalidPolicy, proto)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return r, fmt.Errorf("%s.port: %w: %q is not a port number from 0 to 65535 (named ports are not supported)", field, ErrInvalidPolicy, port)
	}
	r.From, r.To = uint16(n), uint16(n)
	if endPort != 0 {
		if n == 0 || endPort < n || endPort > 65535 {
			return r, fmt.Errorf("%s.endPort: %w: %d (want port ≤ endPort ≤ 65535)", field, ErrInvalidPolicy, endPort)
		}
		r.To = uint16(endPort)
	}
	if n == 0 {
		r.To = 0 // every port
	}
	return r, nil
}

// compileNP compiles a Kubernetes NetworkPolicy: podSelector in the
// policy's namespace; peers by podSelector (same namespace),
// namespaceSelector (pods of matching namespaces) or both.
func compileNP(o Options, where string, p *NetworkPolicy) ([]compiledRule, error) {
	if p.Metadata.Namespace == "" {
		return nil, fmt.Errorf("metadata.namespace: %w: a NetworkPolicy needs a namespace", ErrInvalidPolicy)
	}
	origin := where + " " + p.Metadata.Namespace + "/" + p.Metadata.Name
	subject, err := compileSelector(p.Spec.PodSelector, "spec.podSelector")
	if err != nil {
		return nil, err
	}
	subject = subject.with(nsRequirement(p.Metadata.Namespace)).with(clusterRequirement(o.LocalCluster))
	types := p.Spec.PolicyTypes
	if len(types) == 0 {
		types = []string{"Ingress"}
		if p.Spec.Egress != nil {
			types = append(types, "Egress")
		}
	}
	var out []compiledRule
	for _, t := range types {
		dir, rules := Ingress, p.Spec.Ingress
		switch t {
		case "Ingress":
		case "Egress":
			dir, rules = Egress, p.Spec.Egress
		default:
			return nil, fmt.Errorf("spec.policyTypes: %w: %q (want Ingress or Egress)", ErrInvalidPolicy, t)
		}
		// A direction in policyTypes with no rules denies everything: one
		// rule that allows no peer.
		if len(rules) == 0 {
			out = append(out, compiledRule{origin: origin, subject: subject, dir: dir})
		}
		for i, r := range rules {
			field := fmt.Sprintf("spec.%s[%d]", strings.ToLower(t), i)
			cr := compiledRule{origin: origin, subject: subject, dir: dir}
			peers := r.From
			if dir == Egress {
				peers = r.To
			}
			cr.anyPeer = len(peers) == 0
			for j, peer := range peers {
				s, err := compileNPPeer(o, peer, p.Metadata.Namespace, fmt.Sprintf("%s.peers[%d]", field, j))
				if err != nil {
					return nil, err
				}
				cr.peers = append(cr.peers, s)
			}
			for j, port := range r.Ports {
				num, end := "0", 0
				if port.Port != nil {
					num = strconv.Itoa(*port.Port)
				}
				if port.EndPort != nil {
					end = *port.EndPort
				}
				pr, err := compilePort(num, end, port.Protocol, fmt.Sprintf("%s.ports[%d]", field, j))
				if err != nil {
					return nil, err
				}
				if port.Protocol == "" {
					pr.Protocol = TCP // Kubernetes' default
				}
				cr.ports = append(cr.ports, pr)
			}
			out = append(out, cr)
		}
	}
	return out, nil
}

func compileNPPeer(o Options, peer NetworkPolicyPeer, ns, field string) (selector, error) {
	var s selector
	if peer.PodSelector == nil && peer.NamespaceSelector == nil {
		return s, fmt.Errorf("%s: %w: a peer needs podSelector or namespaceSelector (ipBlock is not supported)", field, ErrInvalidPolicy)
	}
	if peer.PodSelector != nil {
		ps, err := compileSelector(*peer.PodSelector, field+".podSelector")
		if err != nil {
			return s, err
		}
		s = ps
	}
	if peer.NamespaceSelector == nil {
		s = s.with(nsRequirement(ns))
	} else {
		nsSel, err := compileSelector(*peer.NamespaceSelector, field+".namespaceSelector")
		if err != nil {
			return s, err
		}
		for _, r := range nsSel.reqs {
			if r.key == k8sNamespaceNameLabel {
				r.key, r.source = NamespaceLabel, "k8s"
			} else {
				r.key, r.source = namespaceLabelPrefix+r.key, "k8s"
			}
			s = s.with(r)
		}
	}
	if o.DefaultLocalCluster && !s.mentions(wire.ClusterLabel) {
		s = s.with(clusterRequirement(o.LocalCluster))
	}
	return s, nil
}

// hostSelector selects the reserved host identity alone.
var hostSelector = selector{reqs: []requirement{{source: "reserved", key: "host", op: OpExists}}}

// withHostRules adds, for every ingress rule, one that lets the same
// endpoints accept anything from the host.
func withHostRules(rules []compiledRule) []compiledRule {
	out := rules
	for _, r := range rules {
		if r.dir == Ingress {
			out = append(out, compiledRule{origin: r.origin + " (from the host)", subject: r.subject, dir: Ingress, peers: []selector{hostSelector}, implicit: true})
		}
	}
	return out
}
