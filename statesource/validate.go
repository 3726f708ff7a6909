package statesource

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode"

	"github.com/clustermesh/clustermesh/wire"
)

// ErrInvalidState is wrapped by every validation error of a State.
var ErrInvalidState = errors.New("invalid state")

// Validate checks a State for what would make it unpublishable: missing or
// duplicate names, addresses that do not parse or repeat, endpoints on
// unknown nodes, ports of zero, unknown protocols and affinity values. The
// error names the offending item.
func (st *State) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidState}, args...)...))
	}
	nodes := map[string]bool{}
	for i, n := range st.Nodes {
		switch {
		case n.Name == "":
			bad("nodes[%d]: name is empty", i)
		case nodes[n.Name]:
			bad("nodes[%d]: duplicate node %q", i, n.Name)
		}
		nodes[n.Name] = true
		if len(n.IPs) == 0 {
			bad("node %q: no ips (the first is its InternalIP)", n.Name)
		}
		for _, ip := range n.IPs {
			if !ip.IsValid() || ip.Zone() != "" {
				bad("node %q: invalid ip %q", n.Name, ip)
			}
		}
		for _, p := range n.PodCIDRs {
			if !p.IsValid() || p.Masked() != p {
				bad("node %q: invalid podCIDR %q (host bits must be zero)", n.Name, p)
			}
		}
		for _, msg := range checkNodeAnnotations(n.Annotations) {
			bad("node %q: %s", n.Name, msg)
		}
	}
	pods, ips := map[string]bool{}, map[string]string{}
	for i, e := range st.Endpoints {
		if e == nil {
			bad("endpoints[%d]: null", i)
			continue
		}
		id := e.Key()
		if pods[id] && e.Namespace != "" && e.Pod != "" {
			bad("endpoint %s: duplicate", id)
		}
		pods[id] = true
		e.check(i, nodes, bad)
		if e.IP.IsValid() && e.IP.Zone() == "" {
			if other, dup := ips[e.IP.String()]; dup {
				bad("endpoint %s: ip %s already used by %s", id, e.IP, other)
			} else {
				ips[e.IP.String()] = id
			}
		}
	}
	namespaces := map[string]bool{}
	for i, ns := range st.Namespaces {
		switch {
		case ns.Name == "":
			bad("namespaces[%d]: name is empty", i)
		case namespaces[ns.Name]:
			bad("namespaces[%d]: duplicate namespace %q", i, ns.Name)
		}
		namespaces[ns.Name] = true
		for k := range ns.Labels {
			if k == "" {
				bad("namespace %q: empty label key", ns.Name)
			}
		}
	}
	svcs := map[string]bool{}
	for i := range st.Services {
		s := &st.Services[i]
		id := s.Namespace + "/" + s.Name
		switch {
		case s.Namespace == "" || s.Name == "":
			bad("services[%d]: namespace and name are required", i)
		case svcs[id]:
			bad("service %s: duplicate", id)
		}
		svcs[id] = true
		if s.ClusterIP.IsValid() && s.ClusterIP.Zone() != "" {
			bad("service %s: clusterIP %s has a zone", id, s.ClusterIP)
		}
		portNames := map[string]bool{}
		for _, p := range s.Ports {
			if portNames[p.Name] {
				bad("service %s: port name %q used twice (name every port when there are several)", id, p.Name)
			}
			portNames[p.Name] = true
			if p.Port == 0 {
				bad("service %s port %q: port is 0", id, p.Name)
			}
			switch p.Proto() {
			case "TCP", "UDP", "SCTP":
			default:
				bad("service %s port %q: protocol %q (want TCP, UDP or SCTP)", id, p.Name, p.Protocol)
			}
		}
		// Annotation values are not checked here: a bad one must not reject
		// the whole state. The agent falls back to the default and says why
		// in its status.
	}
	return errors.Join(errs...)
}

// Key is the endpoint's "namespace/pod".
func (e *Endpoint) Key() string { return e.Namespace + "/" + e.Pod }

// check reports what is wrong with endpoint i on its own (everything but
// duplicates): names, address, node (one of nodes), interface, workload.
// CheckEndpoint validates one endpoint as Validate does, against the names
// of its state's nodes, for a source that builds a state endpoint by
// endpoint (that keys and addresses do not repeat is the source's to keep).
func CheckEndpoint(e *Endpoint, nodes map[string]bool) error {
	var errs []error
	e.check(0, nodes, func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidState}, args...)...))
	})
	return errors.Join(errs...)
}

func (e *Endpoint) check(i int, nodes map[string]bool, bad func(format string, args ...any)) {
	id := e.Key()
	if e.Namespace == "" || e.Pod == "" {
		bad("endpoints[%d]: namespace and pod are required", i)
	}
	if !e.IP.IsValid() || e.IP.Zone() != "" {
		bad("endpoint %s: invalid ip %q", id, e.IP)
	}
	if e.Node != "" && !nodes[e.Node] {
		bad("endpoint %s: unknown node %q", id, e.Node)
	}
	if !validInterfaceName(e.Interface) {
		bad("endpoint %s: invalid interface %q (a Linux interface name: at most 15 characters, no '/', ':' or spaces)", id, e.Interface)
	}
	if e.Workload != "" {
		if _, err := wire.ParseWorkload(e.Workload); err != nil {
			bad("endpoint %s: %v", id, err)
		}
	}
	e.checkTopology(id, bad)
}

// checkTopology reports a zone, hint or hostname an EndpointSlice could not
// carry: a zone is a label value, a hostname a DNS label, at most 8 hints.
func (e *Endpoint) checkTopology(id string, bad func(format string, args ...any)) {
	for i, z := range append([]string{e.Zone}, e.ForZones...) {
		if !validLabelValue(z) || (i > 0 && z == "") {
			bad("endpoint %s: invalid zone %q (a label value: at most 63 letters, digits, '-', '_', '.', starting and ending alphanumeric)", id, z)
		}
	}
	if len(e.ForZones) > 8 {
		bad("endpoint %s: %d zones in forZones (at most 8)", id, len(e.ForZones))
	}
	if e.Hostname != "" && !validDNSLabel(e.Hostname) {
		bad("endpoint %s: invalid hostname %q (a DNS label: at most 63 lowercase letters, digits and '-')", id, e.Hostname)
	}
}

// validLabelValue reports whether v is a Kubernetes label value (empty
// allowed).
func validLabelValue(v string) bool {
	if len(v) > 63 {
		return false
	}
	for i, r := range v {
		alnum := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if !alnum && ((r != '-' && r != '_' && r != '.') || i == 0 || i == len(v)-1) {
			return false
		}
	}
	return true
}

// validDNSLabel reports whether v is an RFC 1123 label.
func validDNSLabel(v string) bool {
	if v == "" || len(v) > 63 {
		return false
	}
	for i, r := range v {
		alnum := r >= 'a' && r <= 'z' || r >= '0' && r <= '9'
		if !alnum && (r != '-' || i == 0 || i == len(v)-1) {
			return false
		}
	}
	return true
}

// checkNodeAnnotations returns what is wrong with a node's annotations: keys
// that are not Kubernetes qualified names ([prefix/]name), and a value of
// wire.AnnotationHubbleAddress that is not host:port.
func checkNodeAnnotations(a map[string]string) []string {
	var msgs []string
	for _, k := range slices.Sorted(maps.Keys(a)) {
		if !validAnnotationKey(k) {
			msgs = append(msgs, fmt.Sprintf("annotation key %q is not a qualified name ([prefix/]name of letters, digits, '-', '_', '.')", k))
		}
	}
	if v, ok := a[wire.AnnotationHubbleAddress]; ok {
		if err := wire.CheckHubbleAddress(v); err != nil {
			msgs = append(msgs, fmt.Sprintf("annotation %s: %v", wire.AnnotationHubbleAddress, err))
		}
	}
	return msgs
}

// validAnnotationKey reports whether k is a Kubernetes qualified name: an
// optional DNS subdomain prefix and '/', then a name of at most 63
// alphanumerics, '-', '_' or '.', starting and ending alphanumeric.
func validAnnotationKey(k string) bool {
	prefix, name, found := strings.Cut(k, "/")
	if !found {
		prefix, name = "", k
	} else if prefix == "" || len(prefix) > 253 || !qualifiedPart(prefix, "-.") {
		return false
	}
	return len(name) <= 63 && qualifiedPart(name, "-_.")
}

// qualifiedPart reports whether s is non-empty, starts and ends with a
// letter or digit, and holds only those and the runes of extra.
func qualifiedPart(s, extra string) bool {
	alnum := func(r rune) bool { return r < 0x80 && (unicode.IsLetter(r) || unicode.IsDigit(r)) }
	if s == "" || !alnum(rune(s[0])) || !alnum(rune(s[len(s)-1])) {
		return false
	}
	for _, r := range s {
		if !alnum(r) && !strings.ContainsRune(extra, r) {
			return false
		}
	}
	return true
}

// validInterfaceName reports whether name is empty or a valid Linux
// interface name.
func validInterfaceName(name string) bool {
	if name == "" {
		return true
	}
	if len(name) > 15 || name == "." || name == ".." {
		return false
	}
	return !strings.ContainsAny(name, "/: \t\n")
}

// applyNamespaceLabels gives each endpoint the labels of its namespace, from
// st.Namespaces (one map per namespace, shared: never modified).
func (st *State) applyNamespaceLabels() {
	if len(st.Namespaces) == 0 {
		return
	}
	byName := make(map[string]map[string]string, len(st.Namespaces))
	for _, ns := range st.Namespaces {
		byName[ns.Name] = ns.Labels
	}
	for _, e := range st.Endpoints {
		e.NamespaceLabels = byName[e.Namespace]
	}
}
