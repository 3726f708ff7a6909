package meshapiserver

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports an apiserver's publishing as Prometheus metrics.
type Collector struct{ srv *Server }

// NewCollector returns the server's metrics, for a registry of its own.
func NewCollector(s *Server) *Collector { return &Collector{srv: s} }

const ns = "clustermesh_apiserver"

var (
	descEntries  = prometheus.NewDesc(ns+"_entries_published", "Entries currently published under the state prefixes.", nil, nil)
	descWrites   = prometheus.NewDesc(ns+"_writes_total", "Entries written since start, by operation.", []string{"op"}, nil)
	descTxns     = prometheus.NewDesc(ns+"_transactions_total", "Publishing transactions committed since start.", nil, nil)
	descCanary   = prometheus.NewDesc(ns+"_synced_canaries", "1 once the first snapshot is published and the synced canaries are written.", nil, nil)
	descRefused  = prometheus.NewDesc(ns+"_entries_refused", "Entries not published because every agent would reject them (too large, invalid).", nil, nil)
	descRefusals = prometheus.NewDesc(ns+"_entries_refused_total", "Entry values refused since start, by reason.", []string{"reason"}, nil)
	descDenied   = prometheus.NewDesc(ns+"_requests_denied_total", "Requests refused to callers that are not an admin of this cluster, by gRPC method.", []string{"method"}, nil)
)

// newTxnLatency is the histogram of publishing transaction latencies.
func newTxnLatency() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: ns + "_transaction_duration_seconds", Help: "Latency of publishing transactions.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	})
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descEntries, descWrites, descTxns, descCanary, descRefused, descRefusals, descDenied} {
		ch <- d
	}
	c.srv.txnLatency.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.srv.Status()
	ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(st.Publish.Entries))
	ch <- prometheus.MustNewConstMetric(descWrites, prometheus.CounterValue, float64(st.Publish.Puts), "put")
	ch <- prometheus.MustNewConstMetric(descWrites, prometheus.CounterValue, float64(st.Publish.Deletes), "delete")
	ch <- prometheus.MustNewConstMetric(descTxns, prometheus.CounterValue, float64(st.Publish.Txns))
	canary := 0.0
	if st.Ready {
		canary = 1
	}
	ch <- prometheus.MustNewConstMetric(descCanary, prometheus.GaugeValue, canary)
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.GaugeValue, float64(st.Publish.Refused))
	for reason, n := range st.Publish.RefusedTotal {
		ch <- prometheus.MustNewConstMetric(descRefusals, prometheus.CounterValue, float64(n), reason)
	}
	for method, n := range st.Denied {
		ch <- prometheus.MustNewConstMetric(descDenied, prometheus.CounterValue, float64(n), method)
	}
	c.srv.txnLatency.Collect(ch)
}
