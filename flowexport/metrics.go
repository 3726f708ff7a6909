package flowexport

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the export's Prometheus metrics, by exporter name.
type metrics struct {
	flows       *prometheus.CounterVec
	lost        *prometheus.CounterVec
	writeErrors *prometheus.CounterVec
	exporters   prometheus.Gauge
	configValid prometheus.Gauge
	reloads     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_flow_export_flows_total",
			Help: "Flows written to the flow log, by exporter.",
		}, []string{"exporter"}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_flow_export_lost_events_total",
			Help: "Events the flow source dropped because the exporter fell behind (each written as a lost_events line), by exporter.",
		}, []string{"exporter"}),
		writeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_flow_export_write_errors_total",
			Help: "Lines (flows or lost_events) that could not be written to the flow log, by exporter.",
		}, []string{"exporter"}),
		exporters: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clustermesh_flow_export_exporters",
			Help: "Flow exporters running.",
		}),
		configValid: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clustermesh_flow_export_config_valid",
			Help: "1 when the running exporters are the configuration file's, 0 when the file is invalid and the last valid exporters run.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_flow_export_config_reloads_total",
			Help: "Changes of the flow export configuration file read, by result (applied, invalid).",
		}, []string{"result"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.flows, m.lost, m.writeErrors, m.exporters, m.configValid, m.reloads} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering flow export metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) forget(name string) {
	m.flows.DeleteLabelValues(name)
	m.lost.DeleteLabelValues(name)
	m.writeErrors.DeleteLabelValues(name)
}
