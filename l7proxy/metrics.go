package l7proxy

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the proxy's counters; registered when Config.Registerer is
// set.
type metrics struct {
	accepted    *prometheus.CounterVec // protocol, direction, parser
	rejected    *prometheus.CounterVec // reason
	active      prometheus.Gauge
	acceptErrs  prometheus.Counter
	dialErrs    *prometheus.CounterVec // protocol, direction
	redirects   prometheus.Gauge
	listenFails prometheus.Counter
}

// Reasons of clustermesh_l7proxy_rejected_total.
const (
	rejectLimit     = "limit"       // MaxConnections reached
	rejectOrigDst   = "bad-origdst" // a datagram without its original destination
	rejectReadError = "read-error"  // a datagram listener's read failed
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_l7proxy_redirected_total",
			Help: "Connections (TCP) and datagrams (UDP) the L7 proxy handed to an engine.",
		}, []string{"protocol", "direction", "parser"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_l7proxy_rejected_total",
			Help: "Connections and datagrams the L7 proxy refused, by reason (limit, bad-origdst, read-error).",
		}, []string{"reason"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clustermesh_l7proxy_active",
			Help: "Connections and datagrams being served by the L7 engines.",
		}),
		acceptErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustermesh_l7proxy_accept_errors_total",
			Help: "Failed accepts of the L7 proxy's listeners (each followed by a backoff).",
		}),
		dialErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_l7proxy_upstream_dial_errors_total",
			Help: "Upstream connections of the L7 proxy that failed.",
		}, []string{"protocol", "direction"}),
		redirects: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clustermesh_l7proxy_redirects",
			Help: "Redirects (endpoint, port, direction, parser) with a listening proxy port.",
		}),
		listenFails: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustermesh_l7proxy_listen_errors_total",
			Help: "Proxy ports the L7 proxy could not listen on (another port was tried).",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.accepted, m.rejected, m.active, m.acceptErrs, m.dialErrs, m.redirects, m.listenFails} {
		errs = append(errs, reg.Register(c))
	}
	return m, errors.Join(errs...)
}
