package flowmetrics

import (
	"fmt"
	"strconv"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"
)

// The L7 metrics, as Hubble's (cilium v1.20.2, pkg/hubble/metrics/http
// and dns): their context labels come first, then their own.
//
//	http:   hubble_http_requests_total{method,protocol,reporter}
//	        hubble_http_responses_total{method,protocol,status,reporter}
//	        hubble_http_request_duration_seconds{method,reporter} (histogram)
//	httpV2: hubble_http_requests_total{method,protocol,status,reporter} (responses)
//	        hubble_http_request_duration_seconds{method,reporter}
//	dns:    hubble_dns_queries_total{rcode,qtypes,ips_returned[,query]}
//	        hubble_dns_responses_total{rcode,qtypes,ips_returned[,query]}
//	        hubble_dns_response_types_total{type,qtypes[,query]}
//
// reporter is "client" for a flow seen at the client's end (egress),
// "server" at the server's (ingress).

// l7Series are the vectors of an L7 metric beyond its handler's main one:
// http's responses (nil for httpV2) and duration, dns's responses and
// response types.
type l7Series struct {
	responses     *series[prometheus.Counter]
	responseTypes *series[prometheus.Counter]
	duration      *series[prometheus.Observer]
}

func (l l7Series) deletePartial(ls []prometheus.Labels) {
	l.responses.deletePartial(ls)
	l.responseTypes.deletePartial(ls)
	l.duration.deletePartial(ls)
}

func isL7(name string) bool { return name == MetricHTTP || name == MetricHTTPV2 || name == MetricDNS }

// newL7Handler registers the vectors of an L7 metric on reg.
func newL7Handler(mc MetricConfig, reg prometheus.Registerer) (*handler, error) {
	ctx := mc.Context.labelNames()
	labels := func(own ...string) []string { return append(append([]string{}, ctx...), own...) }
	counter := func(name, help string, ls []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "hubble", Name: name, Help: help}, ls)
	}
	h := &handler{name: mc.Name, ctx: mc.Context, opts: mc}
	var vecs []prometheus.Collector
	switch mc.Name {
	case MetricHTTP, MetricHTTPV2:
		reqLabels := labels("method", "protocol", "reporter")
		if mc.Name == MetricHTTPV2 {
			reqLabels = labels("method", "protocol", "status", "reporter")
		}
		req := counter("http_requests_total", "Count of HTTP requests", reqLabels)
		dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "hubble",
			Name: "http_request_duration_seconds", Help: "Quantiles of HTTP request duration in seconds"},
			labels("method", "reporter"))
		h.main, h.l7.duration = newSeries[prometheus.Counter](req), newSeries(observerVec{dur})
		vecs = append(vecs, req, dur)
		if mc.Name == MetricHTTP {
			resp := counter("http_responses_total", "Count of HTTP responses", labels("method", "protocol", "status", "reporter"))
			h.l7.responses = newSeries[prometheus.Counter](resp)
			vecs = append(vecs, resp)
		}
	case MetricDNS:
		own, types := labels("rcode", "qtypes", "ips_returned"), labels("type", "qtypes")
		if mc.Query {
			own, types = append(own, "query"), append(types, "query")
		}
		q := counter("dns_queries_total", "Number of DNS queries observed", own)
		r := counter("dns_responses_total", "Number of DNS responses observed", own)
		rt := counter("dns_response_types_total", "Number of DNS response types observed", types)
		h.main, h.l7.responses, h.l7.responseTypes = newSeries[prometheus.Counter](q), newSeries[prometheus.Counter](r), newSeries[prometheus.Counter](rt)
		vecs = append(vecs, q, r, rt)
	}
	for i, v := range vecs {
		if err := reg.Register(v); err != nil {
			for _, done := range vecs[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("registering the %s metrics: %w", mc.Name, err)
		}
	}
	return h, nil
}

// observerVec is a HistogramVec as a vector of observers.
type observerVec struct{ *prometheus.HistogramVec }

func (v observerVec) GetMetricWithLabelValues(lvs ...string) (prometheus.Observer, error) {
	return v.HistogramVec.GetMetricWithLabelValues(lvs...)
}

// reporter is which end saw an L7 flow.
func reporter(f *flowpb.Flow) string {
	switch f.GetTrafficDirection() {
	case flowpb.TrafficDirection_EGRESS:
		return "client"
	case flowpb.TrafficDirection_INGRESS:
		return "server"
	}
	return "unknown"
}

func (m *Metrics) observeHTTP(h *handler, f *flowpb.Flow, key []byte) {
	http := f.GetL7().GetHttp()
	if http == nil {
		return
	}
	typ := f.GetL7().GetType()
	var trace string
	if h.opts.Exemplars {
		trace = f.GetTraceContext().GetParent().GetTraceId()
	}
	if h.name == MetricHTTPV2 {
		if typ != flowpb.L7FlowType_RESPONSE {
			return
		}
		ctx := h.ctx.appendContextInverted(key, f)
		m.incIn(h.main, appendHTTP(ctx, http, true, f), trace)
		m.observeDuration(h, appendValue(appendValue(ctx, http.GetMethod()), reporter(f)), f, trace)
		return
	}
	ctx := h.ctx.appendContext(key, f)
	switch typ {
	case flowpb.L7FlowType_REQUEST:
		m.incIn(h.main, appendHTTP(ctx, http, false, f), trace)
	case flowpb.L7FlowType_RESPONSE:
		m.incIn(h.l7.responses, appendHTTP(ctx, http, true, f), trace)
		m.observeDuration(h, appendValue(appendValue(ctx, http.GetMethod()), reporter(f)), f, trace)
	}
}

// appendHTTP appends method, protocol, the status when status, and the
// reporter.
func appendHTTP(key []byte, http *flowpb.HTTP, status bool, f *flowpb.Flow) []byte {
	key = appendValue(appendValue(key, http.GetMethod()), http.GetProtocol())
	if status {
		key = appendUint(key, http.GetCode())
	}
	return appendValue(key, reporter(f))
}

func (m *Metrics) observeDuration(h *handler, key []byte, f *flowpb.Flow, trace string) {
	o, ok := h.l7.duration.get(key, &m.labelErrors)
	if !ok {
		return
	}
	secs := float64(f.GetL7().GetLatencyNs()) / 1e9
	if e, ok := o.(prometheus.ExemplarObserver); ok && trace != "" {
		e.ObserveWithExemplar(secs, prometheus.Labels{"traceID": trace})
		return
	}
	o.Observe(secs)
}

func (m *Metrics) observeDNS(h *handler, f *flowpb.Flow, key []byte) {
	dns := f.GetL7().GetDns()
	if dns == nil || (h.opts.IgnoreAAAA && len(dns.GetQtypes()) == 1 && dns.GetQtypes()[0] == "AAAA") {
		return
	}
	ctx := h.ctx.appendContext(key, f)
	withQuery := func(k []byte) []byte {
		if h.opts.Query {
			k = appendValue(k, dns.GetQuery())
		}
		return k
	}
	common := func(rcode string) []byte {
		k := appendJoinedValue(appendValue(ctx, rcode), dns.GetQtypes())
		return withQuery(appendValue(k, strconv.Itoa(len(dns.GetIps()))))
	}
	switch {
	case f.GetVerdict() == flowpb.Verdict_DROPPED:
		m.incIn(h.main, common("Policy denied"), "")
	case !f.GetIsReply().GetValue():
		m.incIn(h.main, common(""), "")
	default:
		m.incIn(h.l7.responses, common(rcodeName(dns.GetRcode())), "")
		for _, rr := range dns.GetRrtypes() {
			k := appendJoinedValue(appendValue(ctx, rr), dns.GetQtypes())
			m.incIn(h.l7.responseTypes, withQuery(k), "")
		}
	}
}

// appendJoinedValue appends vs joined by ',' as one value.
func appendJoinedValue(key []byte, vs []string) []byte {
	key, start := beginValue(key)
	return endValue(appendJoined(key, vs), start)
}

// rcodeNames are Hubble's names of DNS response codes.
var rcodeNames = map[uint32]string{
	0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain", 4: "Not Implemented",
	5: "Query Refused", 6: "Name Exists when it should not", 7: "RR Set Exists when it should not",
	8: "RR Set that should exist does not", 9: "Not Authorized", 10: "Name not contained in zone",
	11: "DSO-TYPE Not Implemented", 16: "Bad OPT Version", 17: "Key not recognized",
	18: "Signature out of time window", 19: "Bad TKEY Mode", 20: "Duplicate key name",
	21: "Algorithm not supported", 22: "Bad Truncation", 23: "Bad/missing Server Cookie",
}

// rcodeName is Hubble's label of an rcode: its name, "" for one Hubble does
// not name.
func rcodeName(rc uint32) string { return rcodeNames[rc] }
