package kvstoremesh

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports a cache's status as Prometheus metrics, read from
// Status at scrape time.
type Collector struct{ cache *Cache }

// NewCollector returns the cache's metrics.
func NewCollector(c *Cache) *Collector { return &Collector{cache: c} }

const ns = "clustermesh_kvstoremesh"

var (
	descConnected = prometheus.NewDesc(ns+"_remote_connected", "1 when the cache is connected to the remote cluster.", []string{"remote"}, nil)
	descReady     = prometheus.NewDesc(ns+"_remote_ready", "1 when every kind of the remote is listed and cached since the last connect.", []string{"remote"}, nil)
	descEntries   = prometheus.NewDesc(ns+"_remote_entries", "Entries cached from the remote, per kind.", []string{"remote", "kind"}, nil)
	descRejected  = prometheus.NewDesc(ns+"_remote_rejected_entries_total", "Entries of the remote rejected by validation (never cached), per reason.", []string{"remote", "reason"}, nil)
	descFailures  = prometheus.NewDesc(ns+"_remote_failures_total", "Sessions with the remote that ended in an error.", []string{"remote"}, nil)
	descTxns      = prometheus.NewDesc(ns+"_write_transactions_total", "Transactions written into the cluster's etcd.", nil, nil)
	descOps       = prometheus.NewDesc(ns+"_write_ops_total", "Operations written into the cluster's etcd.", nil, nil)
	descCoalesced = prometheus.NewDesc(ns+"_write_coalesced_total", "Queued writes replaced by a newer one of the same key before they were written.", nil, nil)
	descWriteFail = prometheus.NewDesc(ns+"_write_failures_total", "Transactions that failed (and were retried).", nil, nil)
	descPending   = prometheus.NewDesc(ns+"_write_pending_ops", "Writes queued and not yet written.", nil, nil)
	descPrevious  = prometheus.NewDesc(ns+"_previous_run_kinds_left", "Kinds of remotes whose entries of a previous run wait for their first full list.", nil, nil)
	descUnchanged = prometheus.NewDesc(ns+"_write_unchanged_total", "Entries of a previous run listed again with the same value on the adopted lease: not rewritten.", nil, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConnected, descReady, descEntries, descRejected, descFailures, descTxns, descOps, descCoalesced, descWriteFail, descPending, descPrevious, descUnchanged} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.cache.Status()
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	for _, r := range st.Remotes {
		ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, b(r.Connected), r.Name)
		ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, b(r.Ready), r.Name)
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(r.Failures), r.Name)
		for kind, n := range map[string]int{"nodes": r.Nodes, "identities": r.Identities, "ipcache": r.Endpoints, "services": r.Services} {
			ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(n), r.Name, kind)
		}
		for reason, n := range r.Rejected {
			ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(n), r.Name, reason)
		}
	}
	w := st.Writes
	ch <- prometheus.MustNewConstMetric(descTxns, prometheus.CounterValue, float64(w.Transactions))
	ch <- prometheus.MustNewConstMetric(descOps, prometheus.CounterValue, float64(w.Ops))
	ch <- prometheus.MustNewConstMetric(descCoalesced, prometheus.CounterValue, float64(w.Coalesced))
	ch <- prometheus.MustNewConstMetric(descWriteFail, prometheus.CounterValue, float64(w.Failures))
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(w.Pending))
	ch <- prometheus.MustNewConstMetric(descPrevious, prometheus.GaugeValue, float64(w.PreviousLeft))
	ch <- prometheus.MustNewConstMetric(descUnchanged, prometheus.CounterValue, float64(w.Unchanged))
}
