package flowmetrics

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/flowl4"
)

// Metrics counts flows into the enabled metrics. Observe is safe for
// concurrent use.
type Metrics struct {
	handlers []*handler
	// labelErrors counts observations the counter vector refused.
	labelErrors atomic.Uint64
}

// handler is one enabled metric: its series (one counter vector for most;
// requests, responses and the duration histogram for http; queries,
// responses and response types for dns).
type handler struct {
	name string
	ctx  ContextOptions
	opts MetricConfig

	main *series[prometheus.Counter] // the metric's (first) counter vector
	// l7 are the vectors of the L7 metrics beyond main (l7.go).
	l7 l7Series
}

// vector is what series needs of a Prometheus metric vector.
type vector[T any] interface {
	GetMetricWithLabelValues(...string) (T, error)
	DeletePartialMatch(prometheus.Labels) int
}

// series is one metric vector and the metric of every label set seen so
// far by key (see appendValue), so that a known label set is counted
// without hashing strings or allocating.
type series[T any] struct {
	vec vector[T]

	mu    sync.RWMutex
	known map[string]T // guarded by mu
}

func newSeries[T any](v vector[T]) *series[T] {
	return &series[T]{vec: v, known: map[string]T{}}
}

// get returns the metric of the label set key; false when Prometheus
// refused its labels (counted in errs).
func (s *series[T]) get(key []byte, errs *atomic.Uint64) (T, bool) {
	s.mu.RLock()
	c, ok := s.known[string(key)]
	s.mu.RUnlock()
	if ok {
		return c, true
	}
	values := splitKey(key)
	for i, v := range values {
		values[i] = strings.ToValidUTF8(v, "\uFFFD")
	}
	c, err := s.vec.GetMetricWithLabelValues(values...)
	if err != nil {
		errs.Add(1)
		return c, false
	}
	s.mu.Lock()
	s.known[string(key)] = c
	s.mu.Unlock()
	return c, true
}

// deletePartial removes the series matching any of ls; the known metrics
// go with them (a later flow starts a new series).
func (s *series[T]) deletePartial(ls []prometheus.Labels) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range ls {
		s.vec.DeletePartialMatch(l)
	}
	clear(s.known)
}

// metricInfo is each metric's Prometheus name, help and fixed labels (the
// context labels follow them, except for drop, where they come first).
var metricInfo = map[string]struct {
	name, help string
	labels     []string
}{
	MetricFlow:             {"flows_processed_total", "Total number of flows processed", []string{"protocol", "type", "subtype", "verdict"}},
	MetricDrop:             {"drop_total", "Number of drops", []string{"reason", "protocol"}},
	MetricTCP:              {"tcp_flags_total", "TCP flag occurrences", []string{"flag", "family"}},
	MetricPortDistribution: {"port_distribution_total", "Numbers of packets distributed by destination port", []string{"protocol", "port"}},
	MetricICMP:             {"icmp_total", "Number of ICMP messages", []string{"family", "type"}},
}

// New registers the counters of cfg's metrics (named hubble_..., as Hubble
// names them) on reg.
func New(cfg Config, reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{}
	for _, mc := range cfg.Metrics {
		if isL7(mc.Name) {
			h, err := newL7Handler(mc, reg)
			if err != nil {
				return nil, err
			}
			m.handlers = append(m.handlers, h)
			continue
		}
		info, ok := metricInfo[mc.Name]
		if !ok {
			return nil, fmt.Errorf("creating metric %q: %w", mc.Name, ErrUnknownMetric)
		}
		labels := append(append([]string{}, info.labels...), mc.Context.labelNames()...)
		if mc.Name == MetricDrop {
			labels = append(mc.Context.labelNames(), info.labels...)
		}
		vec := prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "hubble", Name: info.name, Help: info.help,
		}, labels)
		if err := reg.Register(vec); err != nil {
			return nil, fmt.Errorf("registering hubble_%s: %w", info.name, err)
		}
		m.handlers = append(m.handlers, &handler{name: mc.Name, ctx: mc.Context, opts: mc, main: newSeries[prometheus.Counter](vec)})
	}
	return m, nil
}

// LabelErrors returns how many observations were not counted because
// Prometheus refused their labels (none is expected: values that are not
// UTF-8 are repaired first).
func (m *Metrics) LabelErrors() uint64 { return m.labelErrors.Load() }

// Observe counts f in every enabled metric it concerns.
func (m *Metrics) Observe(f *flowpb.Flow) {
	if f == nil {
		return
	}
	var buf [512]byte
	for _, h := range m.handlers {
		switch h.name {
		case MetricFlow:
			m.observeFlow(h, f, buf[:0])
		case MetricDrop:
			m.observeDrop(h, f, buf[:0])
		case MetricTCP:
			m.observeTCP(h, f, buf[:0])
		case MetricPortDistribution:
			m.observePorts(h, f, buf[:0])
		case MetricICMP:
			m.observeICMP(h, f, buf[:0])
		case MetricHTTP, MetricHTTPV2:
			m.observeHTTP(h, f, buf[:0])
		case MetricDNS:
			m.observeDNS(h, f, buf[:0])
		}
	}
}

// inc counts one observation of the label set key in the handler's main
// counter.
func (m *Metrics) inc(h *handler, key []byte) { m.incIn(h.main, key, "") }

// incIn counts one observation of the label set key in s, with an exemplar
// when traceID is set.
func (m *Metrics) incIn(s *series[prometheus.Counter], key []byte, traceID string) {
	c, ok := s.get(key, &m.labelErrors)
	if !ok {
		return
	}
	if a, ok := c.(prometheus.ExemplarAdder); ok && traceID != "" {
		a.AddWithExemplar(1, prometheus.Labels{"traceID": traceID})
		return
	}
	c.Inc()
}

func forwarded(f *flowpb.Flow) bool {
	v := f.GetVerdict()
	return v == flowpb.Verdict_FORWARDED || v == flowpb.Verdict_REDIRECTED
}

func (m *Metrics) observeFlow(h *handler, f *flowpb.Flow, key []byte) {
	typ, subtype := flowType(f)
	key = appendValue(key, protocol(f))
	key = appendValue(key, typ)
	if subtype == "" && typ == "Unknown" {
		key = appendInt(key, int64(f.GetEventType().GetType()))
	} else {
		key = appendValue(key, subtype)
	}
	key = appendValue(key, f.GetVerdict().String())
	m.inc(h, h.ctx.appendContext(key, f))
}

func (m *Metrics) observeDrop(h *handler, f *flowpb.Flow, key []byte) {
	if f.GetVerdict() != flowpb.Verdict_DROPPED {
		return
	}
	key = h.ctx.appendContext(key, f)
	key = appendValue(key, f.GetDropReasonDesc().String())
	m.inc(h, appendValue(key, protocol(f)))
}

func (m *Metrics) observeTCP(h *handler, f *flowpb.Flow, key []byte) {
	flags := f.GetL4().GetTCP().GetFlags()
	if !forwarded(f) || f.GetIP() == nil || flags == nil {
		return
	}
	rest := appendValue(key, f.GetIP().GetIpVersion().String())
	rest = h.ctx.appendContext(rest, f)
	count := func(flag string) {
		// The flag goes first: build its key after the shared rest.
		k := appendValue(rest[len(rest):], flag)
		k = append(k, rest...)
		m.inc(h, k)
	}
	if flags.GetFIN() {
		count("FIN")
	}
	switch {
	case flags.GetSYN() && flags.GetACK():
		count("SYN-ACK")
	case flags.GetSYN():
		count("SYN")
	}
	if flags.GetRST() {
		count("RST")
	}
}

func (m *Metrics) observePorts(h *handler, f *flowpb.Flow, key []byte) {
	l4 := f.GetL4()
	if !forwarded(f) || l4 == nil || f.GetIsReply() == nil || f.GetIsReply().GetValue() {
		return
	}
	_, port, proto := flowl4.Of(l4)
	if proto == "" {
		return
	}
	key = appendUint(appendValue(key, proto), port)
	m.inc(h, h.ctx.appendContext(key, f))
}

func (m *Metrics) observeICMP(h *handler, f *flowpb.Flow, key []byte) {
	l4 := f.GetL4()
	switch {
	case l4.GetICMPv4() != nil:
		key = appendValue(key, "IPv4")
		key, start := beginValue(key)
		key = endValue(appendICMPv4(key, l4.GetICMPv4().GetType(), l4.GetICMPv4().GetCode()), start)
		m.inc(h, h.ctx.appendContext(key, f))
	case l4.GetICMPv6() != nil:
		key = appendValue(key, "IPv6")
		key, start := beginValue(key)
		key = endValue(appendICMPv6(key, l4.GetICMPv6().GetType(), l4.GetICMPv6().GetCode()), start)
		m.inc(h, h.ctx.appendContext(key, f))
	}
}

// DeletePod removes the series that name a deleted pod, as Hubble does when
// a Cilium endpoint goes (ProcessCiliumEndpointDeletion): those whose source
// or destination context is "pod" and names namespace/name, and those whose
// labelsContext has the pod and namespace labels of that side with its
// values. Other contexts (pod-name, workload, ip) keep their series.
func (m *Metrics) DeletePod(namespace, name string) {
	pod := namespace + "/" + name
	for _, h := range m.handlers {
		o := h.ctx
		var matches []prometheus.Labels
		if slices.Contains(o.Source, ContextPod) || slices.Contains(o.SourceEgress, ContextPod) || slices.Contains(o.SourceIngress, ContextPod) {
			matches = append(matches, prometheus.Labels{"source": pod})
		}
		if slices.Contains(o.Destination, ContextPod) || slices.Contains(o.DestinationEgress, ContextPod) || slices.Contains(o.DestinationIngress, ContextPod) {
			matches = append(matches, prometheus.Labels{"destination": pod})
		}
		for _, side := range []string{"source", "destination"} {
			if slices.Contains(o.Labels, side+"_pod") && slices.Contains(o.Labels, side+"_namespace") {
				matches = append(matches, prometheus.Labels{side + "_pod": name, side + "_namespace": namespace})
			}
		}
		if len(matches) == 0 {
			continue
		}
		h.main.deletePartial(matches)
		h.l7.deletePartial(matches)
	}
}
