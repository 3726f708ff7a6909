package l7dns

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a message is refused, the label of the malformed metric.
const (
	ReasonTruncated       = "truncated"        // ends inside a header, name or record
	ReasonCompressionLoop = "compression_loop" // name pointers that loop or chain too far
	ReasonBadCounts       = "bad_counts"       // header counts the sections do not have
	ReasonQuestionCount   = "question_count"   // a query without exactly one question
	ReasonNotQuery        = "not_query"        // a response, or an opcode other than QUERY
	ReasonTooLarge        = "too_large"        // over MaxQuerySize / MaxResponseSize
	ReasonInvalid         = "invalid"          // any other decoding error
)

var reasons = []string{ReasonTruncated, ReasonCompressionLoop, ReasonBadCounts, ReasonQuestionCount,
	ReasonNotQuery, ReasonTooLarge, ReasonInvalid}

type metrics struct {
	queries     *prometheus.CounterVec // by verdict
	malformed   *prometheus.CounterVec // by direction (query, response) and reason
	upstream    *prometheus.CounterVec // answers by result
	rejected    *prometheus.CounterVec // by limit
	inFlight    prometheus.Gauge
	cacheUpdate prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_l7dns_queries_total",
			Help: "DNS queries the proxy handled, by verdict (forwarded, denied: REFUSED by the rules, error: malformed or unanswered).",
		}, []string{"verdict"}),
		malformed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_l7dns_malformed_total",
			Help: "DNS messages dropped as malformed, by message (query, response) and reason.",
		}, []string{"message", "reason"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_l7dns_upstream_answers_total",
			Help: "Answers of DNS servers, by result (relayed, mismatch: wrong id or question, ignored; failed: no answer in time, the client got SERVFAIL).",
		}, []string{"result"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_l7dns_rejected_total",
			Help: "DNS queries refused by a limit, by limit (concurrency: SERVFAIL; client_rate: dropped).",
		}, []string{"limit"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clustermesh_l7dns_queries_in_flight",
			Help: "DNS queries waiting for their server's answer.",
		}),
		cacheUpdate: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "clustermesh_l7dns_fqdn_update_seconds",
			Help:    "Time to put an allowed answer's addresses into the FQDN cache and tell its subscribers, before the answer is released.",
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 10),
		}),
	}
	for _, msg := range []string{"query", "response"} {
		for _, r := range reasons {
			m.malformed.WithLabelValues(msg, r)
		}
	}
	for _, v := range []string{"forwarded", "denied", "error"} {
		m.queries.WithLabelValues(v)
	}
	for _, v := range []string{"relayed", "mismatch", "failed"} {
		m.upstream.WithLabelValues(v)
	}
	for _, v := range []string{"concurrency", "client_rate"} {
		m.rejected.WithLabelValues(v)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.queries, m.malformed, m.upstream, m.rejected, m.inFlight, m.cacheUpdate} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering DNS proxy metrics: %w", err)
		}
	}
	return m, nil
}
