package merge

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// Annotations of a global service beyond Cilium's.
const (
	// AnnotationMinLocalBackends: with affinity local, while fewer than N
	// local backends are healthy, remote backends take the missing share of
	// the traffic (N−healthy)/N instead of none or all of it.
	AnnotationMinLocalBackends = "clustermesh.io/min-local-backends"
	// AnnotationClusterWeights: "east=3,west=1": each cluster's share of the
	// traffic; a cluster without healthy backends drops out and its share
	// goes to the others. Overrides affinity.
	AnnotationClusterWeights = "clustermesh.io/cluster-weights"
	// AnnotationFailoverOnStaleCluster: "true" marks the backends of a
	// remote cluster whose heartbeat is stale as unhealthy.
	AnnotationFailoverOnStaleCluster = "clustermesh.io/failover-on-stale-cluster"
)

// maxWeightedSlots bounds the slots a weighted selection expands to.
const maxWeightedSlots = 1024

// lbPolicy is how a global service chooses among its backends, parsed from
// its annotations. An invalid annotation leaves the default in force and
// says why in warnings: a typo never takes a service down.
type lbPolicy struct {
	affinity        string
	minLocal        int            // 0: off
	weights         map[string]int // cluster name → weight; nil: off
	failoverOnStale bool
	warnings        []string
}

func parsePolicy(s *statesource.Service) lbPolicy {
	p := lbPolicy{affinity: wire.AffinityNone}
	warn := func(format string, args ...any) { p.warnings = append(p.warnings, fmt.Sprintf(format, args...)) }
	switch a, ok := s.Annotations[wire.AnnotationAffinity]; strings.ToLower(a) {
	case wire.AffinityLocal, wire.AffinityRemote, wire.AffinityNone:
		p.affinity = strings.ToLower(a)
	default:
		if ok {
			warn("%s=%q is not local, remote or none: using none", wire.AnnotationAffinity, a)
		}
	}
	if v, ok := s.Annotations[AnnotationMinLocalBackends]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		switch {
		case err != nil || n < 1 || n > 1000:
			warn("%s=%q is not a number from 1 to 1000: ignored", AnnotationMinLocalBackends, v)
		case p.affinity != wire.AffinityLocal:
			warn("%s applies with affinity local only: ignored", AnnotationMinLocalBackends)
		default:
			p.minLocal = n
		}
	}
	if v, ok := s.Annotations[AnnotationClusterWeights]; ok {
		w, err := parseWeights(v)
		if err != nil {
			warn("%s=%q: %v: ignored", AnnotationClusterWeights, v, err)
		} else {
			p.weights = w
		}
	}
	if v, ok := s.Annotations[AnnotationFailoverOnStaleCluster]; ok {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			warn("%s=%q is not true or false: ignored", AnnotationFailoverOnStaleCluster, v)
		}
		p.failoverOnStale = b
	}
	return p
}

// parseWeights parses "east=3,west=1".
func parseWeights(v string) (map[string]int, error) {
	w := map[string]int{}
	for _, item := range strings.Split(v, ",") {
		name, num, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok {
			return nil, fmt.Errorf("item %q is not cluster=weight", item)
		}
		if err := wire.ValidateClusterName(name); err != nil {
			return nil, fmt.Errorf("item %q: invalid cluster name", item)
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < 0 || n > 1000 {
			return nil, fmt.Errorf("item %q: weight is not a number from 0 to 1000", item)
		}
		if _, dup := w[name]; dup {
			return nil, fmt.Errorf("cluster %s named twice", name)
		}
		w[name] = n
	}
	return w, nil
}

// weighted is a backend and its share of the slots.
type weighted struct {
	b datapath.Backend
	w int
}

// selectBackends chooses the slots of one frontend from the healthy local
// backends and every remote cluster's healthy backends: by cluster weights
// if the service has them, else by affinity — local uses the local
// backends while there is one (with min-local-backends, remote ones fill
// the missing share), remote is the mirror image, none uses all. A backend
// listed n times gets n slots. The result is deterministic.
func (p lbPolicy) selectBackends(localName string, local []datapath.Backend, remote map[string][]datapath.Backend) ([]datapath.Backend, string) {
	var all []datapath.Backend
	for _, bs := range remote {
		all = append(all, bs...)
	}
	sortBackends(all)
	return p.selectSorted(localName, local, remote, all)
}

// selectSorted is selectBackends given every remote backend in all, in
// slot order (a new slice the result may keep).
func (p lbPolicy) selectSorted(localName string, local []datapath.Backend, remote map[string][]datapath.Backend, all []datapath.Backend) ([]datapath.Backend, string) {
	if p.weights != nil {
		if sel := p.byWeights(localName, local, remote); len(sel) > 0 {
			return sel, "weighted"
		}
		// No weighted cluster has a healthy backend: fall back to affinity
		// rather than to nothing.
	}
	local = slices.Clone(local)
	sortBackends(local)
	switch {
	case p.affinity == wire.AffinityLocal && p.minLocal > 0 && len(local) > 0 && len(local) < p.minLocal && len(all) > 0:
		// local takes len(local)/minLocal of the traffic: per-backend
		// weights R : (N−L) for local : remote.
		return expand(append(weigh(local, len(all)), weigh(all, p.minLocal-len(local))...)), "local+remote"
	case p.affinity == wire.AffinityLocal && len(local) > 0:
		return local, "local"
	case p.affinity == wire.AffinityLocal && len(all) > 0:
		return all, "remote"
	case p.affinity == wire.AffinityRemote && len(all) > 0:
		return all, "remote"
	case p.affinity == wire.AffinityRemote && len(local) > 0:
		return local, "local"
	}
	sel := all
	if len(local) > 0 {
		sel = mergeSorted(local, all)
	}
	switch {
	case len(local) > 0 && len(all) > 0:
		return sel, "local+remote"
	case len(local) > 0:
		return sel, "local"
	case len(all) > 0:
		return sel, "remote"
	}
	return nil, "none"
}

// byWeights gives each cluster with healthy backends its weight's share,
// split evenly among its backends.
func (p lbPolicy) byWeights(localName string, local []datapath.Backend, remote map[string][]datapath.Backend) []datapath.Backend {
	byCluster := map[string][]datapath.Backend{localName: local}
	for c, bs := range remote {
		byCluster[c] = bs
	}
	// Per-backend weight w_c / n_c, scaled by the lcm of the n_c to integers.
	l := 1
	for c, bs := range byCluster {
		if p.weights[c] > 0 && len(bs) > 0 {
			l = lcm(l, len(bs))
		}
	}
	var ws []weighted
	names := make([]string, 0, len(byCluster))
	for c := range byCluster {
		names = append(names, c)
	}
	sort.Strings(names)
	for _, c := range names {
		bs := slices.Clone(byCluster[c])
		if p.weights[c] == 0 || len(bs) == 0 {
			continue
		}
		sortBackends(bs)
		ws = append(ws, weigh(bs, p.weights[c]*l/len(bs))...)
	}
	return expand(ws)
}

func weigh(bs []datapath.Backend, w int) []weighted {
	out := make([]weighted, len(bs))
	for i, b := range bs {
		out[i] = weighted{b, w}
	}
	return out
}

// expand turns weights into slots: divided by their gcd, scaled down to at
// most maxWeightedSlots (every backend keeps at least one slot).
func expand(ws []weighted) []datapath.Backend {
	g, total := 0, 0
	for _, w := range ws {
		g = gcd(g, w.w)
	}
	if g == 0 {
		return nil
	}
	for i := range ws {
		ws[i].w /= g
		total += ws[i].w
	}
	out := make([]datapath.Backend, 0, min(total, maxWeightedSlots+len(ws)))
	for _, w := range ws {
		n := w.w
		if total > maxWeightedSlots {
			n = max(1, w.w*maxWeightedSlots/total)
		}
		for range n {
			out = append(out, w.b)
		}
	}
	return out
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func lcm(a, b int) int {
	l := a / gcd(a, b) * b
	if l > maxWeightedSlots { // bound the expansion; shares stay close
		return max(a, b)
	}
	return l
}
