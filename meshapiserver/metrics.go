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
	descEntries = prometheus.NewDesc(ns+"_entries_published", "Entries currently published under the state prefixes.", nil, nil)
	descWrites  = prometheus.NewDesc(ns+"_writes_total", "Entries written since start, by operation.", []string{"op"}, nil)
	descTxns    = prometheus.NewDesc(ns+"_transactions_total", "Publishing transactions committed since start.", nil, nil)
	descChanges = prometheus.NewDesc(ns+"_changes_published_total", "Changes of some endpoints published by comparing only the keys they touch, not the whole state.", nil, nil)
	descCanary  = prometheus.NewDesc(ns+"_synced_canaries", "1 while this server's synced canaries are written (after the first snapshot; again after a lost lease; on an external etcd, only in the leader's current term).", nil, nil)

	descFailures = prometheus.NewDesc(ns+"_publish_failures_total", "Failed publish attempts since start (each retried with backoff).", nil, nil)
	descFailing  = prometheus.NewDesc(ns+"_publish_failing", "1 while the last publish attempt failed.", nil, nil)
	descRefused  = prometheus.NewDesc(ns+"_entries_refused", "Entries not published because every agent would reject them (too large, invalid).", nil, nil)
	descRefusals = prometheus.NewDesc(ns+"_entries_refused_total", "Entry values refused since start, by reason.", []string{"reason"}, nil)
	descRenewals = prometheus.NewDesc(ns+"_lease_renewals_total", "Leases granted after the publishing lease was lost (every entry written again).", nil, nil)
	descDenied   = prometheus.NewDesc(ns+"_requests_denied_total", "Requests refused to callers that are not an admin of this cluster, by gRPC method.", []string{"method"}, nil)
	descHeld     = prometheus.NewDesc(ns+"_endpoints_not_exported", "Endpoints of the last state the export mode (label mode) held back from peers.", []string{"mode"}, nil)
	descView     = prometheus.NewDesc(ns+"_local_view_entries", "Entries published in the local view (every endpoint and identity, for the cluster's own agents; none when everything is exported).", nil, nil)

	// On an external etcd cluster only.
	descLeader    = prometheus.NewDesc(ns+"_leader", "1 while this replica leads (publishes), 0 while it stands by; labelled with the leader's name (empty while none leads).", []string{"leader"}, nil)
	descTerms     = prometheus.NewDesc(ns+"_leader_terms_total", "Times this replica became the leader.", nil, nil)
	descTakeovers = prometheus.NewDesc(ns+"_takeovers_total", "Terms of this replica that began by adopting entries published on another lease (another leader's).", nil, nil)
)

var allDescs = []*prometheus.Desc{descEntries, descWrites, descTxns, descChanges, descCanary, descFailures, descFailing, descRefused, descRefusals, descRenewals, descDenied, descHeld, descView, descLeader, descTerms, descTakeovers}

// newTxnLatency is the histogram of publishing transaction latencies.
func newTxnLatency() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: ns + "_transaction_duration_seconds", Help: "Latency of publishing transactions.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	})
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
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
	ch <- prometheus.MustNewConstMetric(descChanges, prometheus.CounterValue, float64(st.Publish.Changes))
	ch <- prometheus.MustNewConstMetric(descCanary, prometheus.GaugeValue, boolValue(st.Publish.CanariesSet))
	ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(st.PublishFailures))
	ch <- prometheus.MustNewConstMetric(descFailing, prometheus.GaugeValue, boolValue(st.PublishError != ""))
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.GaugeValue, float64(st.Publish.Refused))
	for reason, n := range st.Publish.RefusedTotal {
		ch <- prometheus.MustNewConstMetric(descRefusals, prometheus.CounterValue, float64(n), reason)
	}
	ch <- prometheus.MustNewConstMetric(descRenewals, prometheus.CounterValue, float64(st.LeaseRenewals))
	for method, n := range st.Denied {
		ch <- prometheus.MustNewConstMetric(descDenied, prometheus.CounterValue, float64(n), method)
	}
	ch <- prometheus.MustNewConstMetric(descHeld, prometheus.GaugeValue, float64(st.EndpointsNotExported), string(st.ExportMode))
	ch <- prometheus.MustNewConstMetric(descView, prometheus.GaugeValue, float64(st.LocalViewEntries))
	if st.Role != "" {
		ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, boolValue(st.Role == RoleLeader), st.Leader)
		ch <- prometheus.MustNewConstMetric(descTerms, prometheus.CounterValue, float64(st.Terms))
		ch <- prometheus.MustNewConstMetric(descTakeovers, prometheus.CounterValue, float64(st.Takeovers))
	}
	c.srv.txnLatency.Collect(ch)
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
