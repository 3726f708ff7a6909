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

// handler is one enabled metric: its counters, and the counter of every
// label set seen so far by key (see appendValue), so that a known label set
// is counted without hashing strings or allocating.
type handler struct {
	name string
	ctx  ContextOptions
	vec  *prometheus.CounterVec

	mu       sync.RWMutex
	counters map[string]prometheus.Counter
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
		m.handlers = append(m.handlers, &handler{name: mc.Name, ctx: mc.Context, vec: vec,
			counters: map[string]prometheus.Counter{}})
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
		}
	}
}

// inc counts one observation of the label set key.
func (m *Metrics) inc(h *handler, key []byte) {
	h.mu.RLock()
	c, ok := h.counters[string(key)]
	h.mu.RUnlock()
	if !ok {
		c = m.counter(h, key)
		if c == nil {
			return
		}
	}
	c.Inc()
}

// counter creates (or finds) the counter of a label set seen for the first
// time.
func (m *Metrics) counter(h *handler, key []byte) prometheus.Counter {
	values := splitKey(key)
	for i, v := range values {
		values[i] = strings.ToValidUTF8(v, "\uFFFD")
	}
	c, err := h.vec.GetMetricWithLabelValues(values...)
	if err != nil {
		m.labelErrors.Add(1)
		return nil
	}
	h.mu.Lock()
	h.counters[string(key)] = c
	h.mu.Unlock()
	return c
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
		// The known counters go with the series: a later flow of that pod
		// starts a new series.
		h.mu.Lock()
		for _, l := range matches {
			h.vec.DeletePartialMatch(l)
		}
		clear(h.counters)
		h.mu.Unlock()
	}
}
