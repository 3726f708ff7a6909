package k8smcs

import "github.com/prometheus/client_golang/prometheus"

// metrics are one controller's Prometheus collectors (Collectors).
type metrics struct {
	imports     prometheus.Gauge
	conflicts   prometheus.Gauge
	writes      *prometheus.CounterVec
	writeErrors *prometheus.CounterVec
	rejected    *prometheus.CounterVec
	leader      prometheus.Gauge
}

func newMetrics() *metrics {
	const ns, sub = "clustermesh", "mcs"
	return &metrics{
		imports: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "imports",
			Help: "ServiceImports the last pass wanted (one per exported service name)."}),
		conflicts: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "conflicts",
			Help: "Exports in conflict with their service's oldest export (of every cluster), at the last pass."}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "writes_total",
			Help: "Writes that succeeded, by object (serviceimport, service, serviceexport, servicecidr) and operation."}, []string{"object", "op"}),
		writeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "write_errors_total",
			Help: "Writes that failed, by object and operation (retried)."}, []string{"object", "op"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "exports_rejected_total",
			Help: "Remote export specs refused, by reason (wire.Reason)."}, []string{"reason"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "leader",
			Help: "1 while this process holds the MCS controllers' Lease and writes."}),
	}
}

// Collectors returns the controller's Prometheus collectors.
func (c *Controller) Collectors() []prometheus.Collector {
	m := c.metrics
	return []prometheus.Collector{m.imports, m.conflicts, m.writes, m.writeErrors, m.rejected, m.leader}
}
