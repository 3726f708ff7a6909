package l7http

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the engine's counters (the L7 flows themselves are counted by
// the flow metrics, hubble_http_*).
type metrics struct {
	requests *prometheus.CounterVec // by verdict
	refused  *prometheus.CounterVec // by reason
	upstream *prometheus.CounterVec // by reason
}

func newMetrics(reg prometheus.Registerer, stats func() Stats) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_l7_http_requests_total",
			Help: "HTTP requests the L7 proxy read, by verdict (forwarded, dropped by policy, error: refused as malformed).",
		}, []string{"verdict"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_l7_http_refused_total",
			Help: "HTTP requests the L7 proxy refused (400, 408) and whose connection it closed, by reason (malformed line or field, oversized header section, smuggling attempt, invalid chunk, timeout).",
		}, []string{"reason"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_l7_http_upstream_errors_total",
			Help: "Requests the L7 proxy answered itself because the original destination failed (502, 503, 504), by reason.",
		}, []string{"reason"}),
	}
	if reg == nil {
		return m, nil
	}
	open := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "clustermesh_l7_http_connections",
		Help: "Client connections the HTTP proxy serves.",
	}, func() float64 { return float64(stats().Open) })
	idle := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "clustermesh_l7_http_idle_connections",
		Help: "Client connections the HTTP proxy serves that wait for a request (they hold no buffer).",
	}, func() float64 { return float64(stats().Idle) })
	for _, c := range []prometheus.Collector{m.requests, m.refused, m.upstream, open, idle} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering l7http metrics: %w", err)
		}
	}
	return m, nil
}
