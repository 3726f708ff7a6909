package k8spolicy

import (
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Status is what the watcher reports (the agent's status, under
// "kubernetesPolicy").
type Status struct {
	// Synced: the informers synced and the policies were delivered.
	Synced bool `json:"synced"`
	// CiliumNetworkPolicies: the API server serves them and they are
	// watched.
	CiliumNetworkPolicies bool `json:"ciliumNetworkPolicies"`
	// Objects are the policy objects known, Enforced those with a valid
	// version in the delivered set.
	Objects  int `json:"objects"`
	Enforced int `json:"enforced"`
	// Rules is the number of compiled rule directions last delivered.
	Rules      int    `json:"rules"`
	Deliveries uint64 `json:"deliveries"`
	// InvalidTotal counts invalid object versions, by kind.
	InvalidTotal map[string]uint64 `json:"invalidTotal,omitempty"`
	// Invalid are the objects whose current version is invalid.
	Invalid []ObjectError `json:"invalid,omitempty"`
}

// ObjectError is an object whose current version is invalid.
type ObjectError struct {
	ObjectRef
	Error string    `json:"error"`
	Since time.Time `json:"since"`
	// PreviousEnforced: an earlier valid version of it is enforced (else
	// it contributes nothing).
	PreviousEnforced bool `json:"previousEnforced"`
}

// Status returns the watcher's status.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	st := w.status
	w.mu.Unlock()
	s := w.store
	s.mu.Lock()
	defer s.mu.Unlock()
	st.Objects = len(s.objects)
	st.InvalidTotal = maps.Clone(s.invalidTotal)
	for ref, o := range s.objects {
		if o.valid != nil {
			st.Enforced++
		}
		if o.err != nil {
			st.Invalid = append(st.Invalid, ObjectError{ObjectRef: ref, Error: o.err.Error(), Since: o.errSince, PreviousEnforced: o.valid != nil})
		}
	}
	slices.SortFunc(st.Invalid, func(a, b ObjectError) int { return compareRefs(a.ObjectRef, b.ObjectRef) })
	return st
}

var (
	descObjects = prometheus.NewDesc("clustermesh_policy_kubernetes_objects", "Kubernetes policy objects by kind and state (valid: the current version is enforced; invalid: it is not, an earlier valid one may be).", []string{"kind", "state"}, nil)
	descInvalid = prometheus.NewDesc("clustermesh_policy_kubernetes_invalid_total", "Invalid Kubernetes policy object versions seen (an earlier valid version stays enforced).", []string{"kind"}, nil)
	descRules   = prometheus.NewDesc("clustermesh_policy_kubernetes_rules", "Compiled rule directions of the Kubernetes policy objects last delivered.", nil, nil)
	descSynced  = prometheus.NewDesc("clustermesh_policy_kubernetes_synced", "1 once the Kubernetes policy informers synced and the policies were delivered.", nil, nil)
	descCNP     = prometheus.NewDesc("clustermesh_policy_kubernetes_cnp_watched", "1 while CiliumNetworkPolicies are served and watched.", nil, nil)
)

// Collector exports the watcher's status as Prometheus metrics.
func (w *Watcher) Collector() prometheus.Collector { return collector{w} }

type collector struct{ w *Watcher }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descObjects, descInvalid, descRules, descSynced, descCNP} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.w.Status()
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	invalid := map[string]int{}
	for _, e := range s.Invalid {
		invalid[e.Kind]++
	}
	all := c.w.kindCounts()
	for _, kind := range []string{KindNetworkPolicy, KindCiliumNetworkPolicy} {
		gauge(descObjects, float64(all[kind]-invalid[kind]), kind, "valid")
		gauge(descObjects, float64(invalid[kind]), kind, "invalid")
		ch <- prometheus.MustNewConstMetric(descInvalid, prometheus.CounterValue, float64(s.InvalidTotal[kind]), kind)
	}
	gauge(descRules, float64(s.Rules))
	gauge(descSynced, b2f(s.Synced))
	gauge(descCNP, b2f(s.CiliumNetworkPolicies))
}

// kindCounts counts the objects known by kind.
func (w *Watcher) kindCounts() map[string]int {
	s := w.store
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for ref := range s.objects {
		out[ref.Kind]++
	}
	return out
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
