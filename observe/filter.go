package observe

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/clustermesh/clustermesh/wire"
)

// Filter selects flows; every field set must match (they are ANDed), the
// zero Filter matches every flow. Build it with Set (which validates and
// normalizes) or FilterFromQuery; the CLI's flags and the query string use
// the same keys (FilterKeys).
type Filter struct {
	// Verdict is FORWARDED or DROPPED.
	Verdict string
	// FromCluster and ToCluster name the source's and the destination's
	// cluster.
	FromCluster, ToCluster string
	// FromPod and ToPod are "pod" (any namespace) or "namespace/pod"; the
	// pod name matches as a prefix, as in hubble observe ("checkout"
	// matches checkout-0 and checkout-1).
	FromPod, ToPod string
	// Namespace matches a flow with either end in it.
	Namespace string
	// Protocol is TCP, UDP, SCTP, ICMP or ICMPv6.
	Protocol string
	// Identity matches a flow with either end of that security identity.
	Identity uint32
}

// FilterKeys are the keys of Set and of the query string, in order; each is
// also the CLI's flag (--from-pod ...).
var FilterKeys = []string{"verdict", "from-cluster", "to-cluster", "from-pod", "to-pod", "namespace", "protocol", "identity"}

var protocols = []string{"TCP", "UDP", "SCTP", "ICMP", "ICMPv6"}

// Set sets the field of key from a string, validated and normalized;
// an empty value clears it. An invalid value's error starts with the key
// (`verdict "DROPED": want FORWARDED or DROPPED`), so that the CLI can name
// its flag.
func (f *Filter) Set(key, value string) error {
	value = strings.TrimSpace(value)
	var err error
	switch key {
	case "verdict":
		f.Verdict, err = parseVerdict(value)
	case "from-cluster":
		f.FromCluster, err = parseCluster(key, value)
	case "to-cluster":
		f.ToCluster, err = parseCluster(key, value)
	case "from-pod":
		f.FromPod, err = parsePod(key, value)
	case "to-pod":
		f.ToPod, err = parsePod(key, value)
	case "namespace":
		f.Namespace, err = parseNamespace(value)
	case "protocol":
		f.Protocol, err = parseProtocol(value)
	case "identity":
		f.Identity, err = parseIdentity(value)
	default:
		return fmt.Errorf("unknown filter %q (want one of %s)", key, strings.Join(FilterKeys, ", "))
	}
	return err
}

func parseVerdict(s string) (string, error) {
	switch v := strings.ToUpper(s); v {
	case "", VerdictForwarded, VerdictDropped:
		return v, nil
	}
	return "", fmt.Errorf("verdict %q: want %s or %s", s, VerdictForwarded, VerdictDropped)
}

func parseCluster(key, s string) (string, error) {
	if s == "" {
		return "", nil
	}
	if err := wire.ValidateClusterName(s); err != nil {
		return "", fmt.Errorf("%s %q: not a cluster name (at most %d characters of a-z, 0-9 and '-', starting and ending with a letter or digit)",
			key, s, wire.MaxClusterNameLen)
	}
	return s, nil
}

func parsePod(key, s string) (string, error) {
	if s == "" {
		return "", nil
	}
	ns, pod, namespaced := strings.Cut(s, "/")
	if !namespaced {
		ns, pod = "", s
	}
	if pod == "" || (namespaced && ns == "") || strings.Contains(pod, "/") || strings.ContainsAny(s, " \t\n") {
		return "", fmt.Errorf("%s %q: want POD or NAMESPACE/POD (the pod name matches as a prefix)", key, s)
	}
	return s, nil
}

func parseNamespace(s string) (string, error) {
	if strings.ContainsAny(s, "/ \t\n") {
		return "", fmt.Errorf("namespace %q: want a namespace name (for a pod, use from-pod or to-pod NAMESPACE/POD)", s)
	}
	return s, nil
}

func parseProtocol(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	for _, p := range protocols {
		if strings.EqualFold(s, p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("protocol %q: want one of %s", s, strings.Join(protocols, ", "))
}

func parseIdentity(s string) (uint32, error) {
	if s == "" {
		return 0, nil
	}
	id, err := strconv.ParseUint(s, 10, 32)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("identity %q: want a numeric security identity (1 to %d)", s, uint32(1<<32-1))
	}
	return uint32(id), nil
}

// Query encodes f as query parameters (only the fields set).
func (f Filter) Query() url.Values {
	q := url.Values{}
	for _, kv := range f.pairs() {
		q.Set(kv[0], kv[1])
	}
	return q
}

// pairs lists the fields set as key, value, in FilterKeys order.
func (f Filter) pairs() [][2]string {
	var out [][2]string
	add := func(k, v string) {
		if v != "" {
			out = append(out, [2]string{k, v})
		}
	}
	add("verdict", f.Verdict)
	add("from-cluster", f.FromCluster)
	add("to-cluster", f.ToCluster)
	add("from-pod", f.FromPod)
	add("to-pod", f.ToPod)
	add("namespace", f.Namespace)
	add("protocol", f.Protocol)
	if f.Identity != 0 {
		add("identity", strconv.FormatUint(uint64(f.Identity), 10))
	}
	return out
}

// String describes f for logs: "verdict=DROPPED to-cluster=east", or "all".
func (f Filter) String() string {
	ps := f.pairs()
	if len(ps) == 0 {
		return "all"
	}
	s := make([]string, len(ps))
	for i, kv := range ps {
		s[i] = kv[0] + "=" + kv[1]
	}
	return strings.Join(s, " ")
}

// FilterFromQuery decodes a filter from query parameters; an unknown key,
// a key given twice or an invalid value is an error.
func FilterFromQuery(q url.Values) (Filter, error) {
	var f Filter
	for _, k := range FilterKeys {
		vs := q[k]
		if len(vs) > 1 {
			return Filter{}, fmt.Errorf("filter %s given %d times (once at most)", k, len(vs))
		}
		if len(vs) == 1 {
			if err := f.Set(k, vs[0]); err != nil {
				return Filter{}, err
			}
		}
	}
	for k := range q {
		if !isFilterKey(k) {
			return Filter{}, fmt.Errorf("unknown filter %q (want one of %s)", k, strings.Join(FilterKeys, ", "))
		}
	}
	return f, nil
}

func isFilterKey(k string) bool {
	for _, x := range FilterKeys {
		if x == k {
			return true
		}
	}
	return false
}

// Match reports whether fl passes every field of f.
func (f Filter) Match(fl *Flow) bool {
	switch {
	case f.Verdict != "" && fl.Verdict != f.Verdict,
		f.FromCluster != "" && fl.Source.Cluster != f.FromCluster,
		f.ToCluster != "" && fl.Destination.Cluster != f.ToCluster,
		f.FromPod != "" && !matchPod(f.FromPod, &fl.Source),
		f.ToPod != "" && !matchPod(f.ToPod, &fl.Destination),
		f.Namespace != "" && fl.Source.Namespace != f.Namespace && fl.Destination.Namespace != f.Namespace,
		f.Protocol != "" && fl.Protocol != f.Protocol,
		f.Identity != 0 && fl.Source.Identity != f.Identity && fl.Destination.Identity != f.Identity:
		return false
	}
	return true
}

func matchPod(sel string, ep *Endpoint) bool {
	if ep.Pod == "" {
		return false
	}
	if ns, pod, ok := strings.Cut(sel, "/"); ok {
		return ep.Namespace == ns && strings.HasPrefix(ep.Pod, pod)
	}
	return strings.HasPrefix(ep.Pod, sel)
}
