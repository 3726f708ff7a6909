package agentsync

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports an agent's status as Prometheus metrics. It reads
// Status at scrape time, so metrics and `clustermesh status` never disagree.
type Collector struct {
	agent *Agent
}

// NewCollector returns the agent's metrics; register it on a registry of
// the agent's own (several agents may share a process, as in the demo).
func NewCollector(a *Agent) *Collector { return &Collector{agent: a} }

const ns = "clustermesh_agent"

var (
	descReady = prometheus.NewDesc(ns+"_remote_ready",
		"1 when every kind of the remote cluster is synced since the last connect.", []string{"remote"}, nil)
	descConnected = prometheus.NewDesc(ns+"_remote_connected",
		"1 when the agent is connected to the remote cluster.", []string{"remote"}, nil)
	descStale = prometheus.NewDesc(ns+"_remote_stale",
		"1 when the remote's heartbeat is older than the heartbeat timeout.", []string{"remote"}, nil)
	descFailures = prometheus.NewDesc(ns+"_remote_failures_total",
		"Sessions with the remote cluster that ended in an error.", []string{"remote"}, nil)
	descLastFailure = prometheus.NewDesc(ns+"_remote_last_failure_timestamp_seconds",
		"Unix time of the last failed session.", []string{"remote"}, nil)
	descEntries = prometheus.NewDesc(ns+"_remote_entries",
		"Entries the agent holds from the remote, per kind.", []string{"remote", "kind"}, nil)
	descEvents = prometheus.NewDesc(ns+"_remote_events_applied_total",
		"Entries applied from the remote's lists and watches, per kind.", []string{"remote", "kind"}, nil)
	descRejected = prometheus.NewDesc(ns+"_remote_rejected_entries_total",
		"Entries from the remote rejected by validation, per reason.", []string{"remote", "reason"}, nil)
	descLastEvent = prometheus.NewDesc(ns+"_remote_last_event_timestamp_seconds",
		"Unix time of the last entry applied from the remote.", []string{"remote"}, nil)
	descSync = prometheus.NewDesc(ns+"_remote_sync_duration_seconds",
		"Duration of the last complete list of each kind.", []string{"remote", "kind"}, nil)
	descDatapathErrors = prometheus.NewDesc(ns+"_datapath_write_errors_total",
		"Datapath writes that failed (they are retried).", nil, nil)
	descNotInForce = prometheus.NewDesc(ns+"_remote_not_in_force_entries",
		"Entries the remote published that are outside the address ranges of its nodes (or inside a range another cluster claimed first), and so not in the datapath.", []string{"remote", "reason"}, nil)
	descRetained = prometheus.NewDesc(ns+"_retained_entries",
		"Entries a previous run left in the datapath, kept until their cluster has fully synced.", []string{"kind"}, nil)
	descCacheDown = prometheus.NewDesc(ns+"_remote_cache_down",
		"For a remote read through a kvstoremesh cache: 1 when the cache has stopped rewriting its status of the remote (the cache is down), 0 while it runs.", []string{"remote"}, nil)
	descServiceSelected = prometheus.NewDesc(ns+"_service_selected_backends",
		"Backends selected for each global service frontend.", []string{"service", "frontend", "from"}, nil)
	descServiceRemote = prometheus.NewDesc(ns+"_service_remote_backends",
		"Healthy backends the remote clusters offer for each global service frontend, whether its affinity selects them or not.", []string{"service", "frontend"}, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReady, descConnected, descStale, descFailures, descLastFailure, descEntries,
		descEvents, descRejected, descLastEvent, descSync, descDatapathErrors, descServiceSelected, descServiceRemote, descNotInForce, descRetained, descCacheDown} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.agent.Status()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	for _, r := range st.Remotes {
		gauge(descReady, boolFloat(r.Ready), r.Name)
		gauge(descConnected, boolFloat(r.Connected), r.Name)
		gauge(descStale, boolFloat(r.Stale), r.Name)
		counter(descFailures, float64(r.Failures), r.Name)
		if !r.LastFailure.IsZero() {
			gauge(descLastFailure, float64(r.LastFailure.UnixNano())/1e9, r.Name)
		}
		if !r.LastEvent.IsZero() {
			gauge(descLastEvent, float64(r.LastEvent.UnixNano())/1e9, r.Name)
		}
		for kind, n := range map[string]int{"nodes": r.Nodes, "ipcache": r.Endpoints, "identities": r.Identities, "services": r.Services} {
			gauge(descEntries, float64(n), r.Name, kind)
		}
		for kind, n := range r.EventsApplied {
			counter(descEvents, float64(n), r.Name, kind)
		}
		for kind, s := range r.SyncSeconds {
			gauge(descSync, s, r.Name, kind)
		}
		for reason, n := range r.Rejected {
			counter(descRejected, float64(n), r.Name, reason)
		}
		if r.ViaCache != nil {
			gauge(descCacheDown, boolFloat(r.ViaCache.CacheDown), r.Name)
		}
		gauge(descNotInForce, float64(r.NotInForce.IPCacheOutside), r.Name, "ipcache_outside_ranges")
		gauge(descNotInForce, float64(r.NotInForce.IPCacheClaimed), r.Name, "ipcache_claimed_by_other")
		gauge(descNotInForce, float64(r.NotInForce.BackendsOutside), r.Name, "backends_outside_ranges")
	}
	var ret Retained
	if st.Retained != nil {
		ret = *st.Retained
	}
	gauge(descRetained, float64(ret.IPCache), "ipcache")
	gauge(descRetained, float64(ret.Backends), "backends")
	counter(descDatapathErrors, float64(st.DatapathErrors))
	for _, s := range st.Services {
		gauge(descServiceSelected, float64(s.Selected), s.Namespace+"/"+s.Name, s.Frontend, s.SelectedFrom)
		if s.Frontend != "" { // not a service that exists only in remote clusters
			remote := 0
			for _, n := range s.RemoteHealthy {
				remote += n
			}
			gauge(descServiceRemote, float64(remote), s.Namespace+"/"+s.Name, s.Frontend)
		}
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
