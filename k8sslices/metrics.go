package k8sslices

import "github.com/prometheus/client_golang/prometheus"

// Write operations, the op label of the metrics.
const (
	opCreate = "create"
	opUpdate = "update"
	opDelete = "delete"
)

// metrics are one writer's Prometheus collectors (Collectors).
type metrics struct {
	writes       *prometheus.CounterVec
	writeErrors  *prometheus.CounterVec
	conflicts    prometheus.Counter
	writeSeconds prometheus.Histogram
	leader       prometheus.Gauge
	slices       prometheus.Gauge

	topologyDropped prometheus.Counter
}

func newMetrics() *metrics {
	const ns, sub = "clustermesh", "slices"
	return &metrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "writes_total",
			Help: "EndpointSlice writes that succeeded, by operation (create, update, delete)."}, []string{"op"}),
		writeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "write_errors_total",
			Help: "EndpointSlice writes that failed, conflicts aside, by operation."}, []string{"op"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "conflicts_total",
			Help: "EndpointSlice writes refused as conflicts (stale resourceVersion, or a slice of that name already there), retried."}),
		writeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "write_duration_seconds",
			Help: "Duration of successful EndpointSlice writes.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "leader",
			Help: "1 while this process holds the endpoint slice writers' Lease and writes."}),
		slices: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "wanted",
			Help: "EndpointSlices of remote backends the last pass wanted."}),
		topologyDropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "topology_dropped_total",
			Help: "Remote backends' zones, hint zones or hostnames left out of a computed slice because the API server would refuse them (counted per pass)."}),
	}
}

// Collectors returns the writer's Prometheus collectors.
func (w *Writer) Collectors() []prometheus.Collector {
	m := w.metrics
	return []prometheus.Collector{m.writes, m.writeErrors, m.conflicts, m.writeSeconds, m.leader, m.slices, m.topologyDropped}
}
