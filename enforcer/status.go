package enforcer

import (
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/wire"
)

// Status is what the enforcer reports (the agent's status, under "policy").
type Status struct {
	PolicyDir   string   `json:"policyDir,omitempty"`
	PolicyFiles []string `json:"policyFiles,omitempty"`
	// Rules is the number of compiled rule directions enforced.
	Rules int `json:"rules"`
	// LastPolicyError is why the current files are not the enforced ones
	// (empty when they are).
	LastPolicyError     string    `json:"lastPolicyError,omitempty"`
	LastPolicyErrorTime time.Time `json:"lastPolicyErrorTime,omitzero"`
	PolicyReloadErrors  uint64    `json:"policyReloadErrors"`
	// Enforcing: the agent synced and the policy map was written.
	Enforcing     bool `json:"enforcing"`
	Identities    int  `json:"identities"` // every cluster's
	PolicyEntries int  `json:"policyEntries"`
	// RetainedClusters are the ids of the clusters not synced since the
	// agent restarted whose previous run's policy entries are kept (for
	// their identities not known yet) until they sync.
	RetainedClusters []uint16 `json:"retainedClusters,omitempty"`
	WriteErrors      uint64   `json:"writeErrors"`
	LastWriteError   string   `json:"lastWriteError,omitempty"`
	// RedirectedEntries are the entries with L7 rules (sent to the proxy);
	// RedirectsWaiting those not written for want of a proxy listener
	// (their traffic is dropped), ProxyPortErrors the failed asks.
	RedirectedEntries int    `json:"redirectedEntries"`
	RedirectsWaiting  int    `json:"redirectsWaiting,omitempty"`
	ProxyPortErrors   uint64 `json:"proxyPortErrors,omitempty"`
	LastProxyError    string `json:"lastProxyError,omitempty"`
	// L7Conflicts counts entries whose rules (of different sources: the
	// directory refuses such a set) had HTTP and DNS rules: the first
	// rule's parser was kept.
	L7Conflicts uint64 `json:"l7Conflicts,omitempty"`
	// FQDNPatterns are the toFQDNs patterns subscribed to; FQDNAddresses
	// the addresses they hold, each with a node-local identity.
	FQDNPatterns    int              `json:"fqdnPatterns"`
	FQDNAddresses   int              `json:"fqdnAddresses"`
	FQDNRefused     uint64           `json:"fqdnRefused,omitempty"`
	FQDNWriteErrors uint64           `json:"fqdnWriteErrors,omitempty"`
	LastFQDNError   string           `json:"lastFQDNError,omitempty"`
	Endpoints       []EndpointStatus `json:"endpoints"`
}

// EndpointStatus is one endpoint of this node.
type EndpointStatus struct {
	Namespace      string `json:"namespace"`
	Pod            string `json:"pod"`
	Interface      string `json:"interface,omitempty"`
	Identity       uint32 `json:"identity,omitempty"`
	EnforceIngress bool   `json:"enforceIngress"`
	EnforceEgress  bool   `json:"enforceEgress"`
	// Audit: in audit mode (Config.AuditNamespaces), what its policy
	// denies passes and is reported AUDIT.
	Audit bool `json:"audit,omitempty"`
	// Redirects are its entries sent to the L7 proxy, grouped.
	Redirects []RedirectStatus `json:"redirects,omitempty"`
	State     string           `json:"state"`
	Error     string           `json:"error,omitempty"`
}

// publishStatus copies what Run's goroutine owns into the status.
func (e *Enforcer) publishStatus() {
	eps := slices.Clone(e.eps.statuses)
	redirects := e.redirectSummary()
	for i := range eps {
		eps[i].Redirects = redirects[eps[i].Identity]
	}
	var retained []uint16
	if e.written {
		retained = slices.Sorted(maps.Keys(e.kept))
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.status.Enforcing = e.written && !e.dirty
	e.status.Identities = len(e.identities)
	e.status.PolicyEntries = e.entries
	e.status.RetainedClusters = retained
	e.status.Endpoints = eps
	e.redir.mu.RLock()
	e.status.RedirectedEntries = len(e.redir.entries)
	e.redir.mu.RUnlock()
	e.status.RedirectsWaiting = e.redir.failed
	e.status.L7Conflicts = e.engine.L7Conflicts()
	e.status.ProxyPortErrors, e.status.LastProxyError = e.redir.errors, e.redir.lastErr
	e.status.FQDNPatterns, e.status.FQDNAddresses = len(e.fq.subs), len(e.fq.addrs)
	e.status.FQDNRefused, e.status.FQDNWriteErrors, e.status.LastFQDNError = e.fq.refused, e.fq.errors, e.fq.lastErr
}

// Status returns the enforcer's status.
func (e *Enforcer) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.status
	s.PolicyFiles = slices.Clone(s.PolicyFiles)
	s.Endpoints = slices.Clone(s.Endpoints)
	s.RetainedClusters = slices.Clone(s.RetainedClusters)
	return s
}

// Identity returns the labels of an identity of any cluster (for flows).
func (e *Enforcer) Identity(id uint32) (wire.Labels, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ls, ok := e.identities[id]
	return ls, ok
}

// ClusterName names a cluster id (for flows).
func (e *Enforcer) ClusterName(id uint16) string { return e.cfg.ClusterNames(id) }

// Pod returns the local pod with address ip (for flows).
func (e *Enforcer) Pod(ip netip.Addr) (namespace, pod string, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.pods[ip.Unmap()]
	return p.namespace, p.pod, ok
}

var (
	descRules      = prometheus.NewDesc("clustermesh_policy_rules", "Compiled policy rule directions enforced.", nil, nil)
	descEntries    = prometheus.NewDesc("clustermesh_policy_entries", "Allowed (endpoint, peer, direction, port) entries computed.", nil, nil)
	descIdentities = prometheus.NewDesc("clustermesh_policy_identities", "Identities known, of every cluster.", nil, nil)
	descEndpoints  = prometheus.NewDesc("clustermesh_policy_endpoints", "This node's endpoints by policy state.", []string{"state"}, nil)
	descReloadErrs = prometheus.NewDesc("clustermesh_policy_reload_errors_total", "Policy directory reads that were invalid (the last valid policies stayed).", nil, nil)
	descWriteErrs  = prometheus.NewDesc("clustermesh_policy_write_errors_total", "Failed writes of the policy map.", nil, nil)
	descEnforcing  = prometheus.NewDesc("clustermesh_policy_enforcing", "1 once the policy map is written and current.", nil, nil)
	descRetained   = prometheus.NewDesc("clustermesh_policy_retained_clusters", "Clusters not synced since the agent restarted whose previous run's policy entries are kept.", nil, nil)
	descRedirected = prometheus.NewDesc("clustermesh_policy_redirected_entries", "Policy entries with L7 rules (their traffic goes through the L7 proxy).", nil, nil)
	descWaiting    = prometheus.NewDesc("clustermesh_policy_redirects_waiting", "Policy entries with L7 rules not written for want of a proxy listener (their traffic is dropped).", nil, nil)
	descFQDNAddrs  = prometheus.NewDesc("clustermesh_policy_fqdn_addresses", "Addresses of toFQDNs-selected names, each with a node-local identity.", nil, nil)
	descFQDNRefuse = prometheus.NewDesc("clustermesh_policy_fqdn_refused_total", "FQDN-selected addresses refused over MaxFQDNAddresses.", nil, nil)
)

// Collector exports the enforcer's status as Prometheus metrics.
func (e *Enforcer) Collector() prometheus.Collector { return collector{e} }

type collector struct{ e *Enforcer }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRules, descEntries, descIdentities, descEndpoints, descReloadErrs, descWriteErrs, descEnforcing, descRetained,
		descRedirected, descWaiting, descFQDNAddrs, descFQDNRefuse} {
		ch <- d
	}
	c.e.fq.latency.Describe(ch)
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.e.Status()
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	gauge(descRules, float64(s.Rules))
	gauge(descEntries, float64(s.PolicyEntries))
	gauge(descIdentities, float64(s.Identities))
	gauge(descRetained, float64(len(s.RetainedClusters)))
	gauge(descRedirected, float64(s.RedirectedEntries))
	gauge(descWaiting, float64(s.RedirectsWaiting))
	gauge(descFQDNAddrs, float64(s.FQDNAddresses))
	ch <- prometheus.MustNewConstMetric(descFQDNRefuse, prometheus.CounterValue, float64(s.FQDNRefused))
	c.e.fq.latency.Collect(ch)
	enforcing := 0.0
	if s.Enforcing {
		enforcing = 1
	}
	gauge(descEnforcing, enforcing)
	ch <- prometheus.MustNewConstMetric(descReloadErrs, prometheus.CounterValue, float64(s.PolicyReloadErrors))
	ch <- prometheus.MustNewConstMetric(descWriteErrs, prometheus.CounterValue, float64(s.WriteErrors))
	states := map[string]int{StateEnforcing: 0, StateNotEnforced: 0, StateNoInterface: 0, StateNoIdentity: 0, StateError: 0}
	for _, ep := range s.Endpoints {
		states[ep.State]++
	}
	for st, n := range states {
		gauge(descEndpoints, float64(n), st)
	}
}
