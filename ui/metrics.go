package ui

import "github.com/prometheus/client_golang/prometheus"

// metrics are the UI's own: flows read, stream reconnections, pages
// following the map.
type metrics struct {
	flows      prometheus.Counter
	reconnects prometheus.Counter
	pages      prometheus.Gauge
	denied     *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		flows: prometheus.NewCounter(prometheus.CounterOpts{Name: "clustermesh_ui_flows_total",
			Help: "Flows the UI read from the Observer API into its map."}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "clustermesh_ui_stream_reconnects_total",
			Help: "Times the UI's flow stream ended and was opened again."}),
		pages: prometheus.NewGauge(prometheus.GaugeOpts{Name: "clustermesh_ui_pages",
			Help: "Pages following the map's updates now."}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "clustermesh_ui_requests_denied_total",
			Help: "Requests refused by the UI's access control, by reason (token, host)."}, []string{"reason"}),
	}
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	m.flows.Describe(ch)
	m.reconnects.Describe(ch)
	m.pages.Describe(ch)
	m.denied.Describe(ch)
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.flows.Collect(ch)
	m.reconnects.Collect(ch)
	m.pages.Collect(ch)
	m.denied.Collect(ch)
}
