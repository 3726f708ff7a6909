package observe

import (
	"github.com/prometheus/client_golang/prometheus"
)

// counts are a hub's own counts, kept under its lock. Flow metrics by
// verdict, reason, port... are package flowmetrics', on Config.OnFlow.
type counts struct {
	flows          uint64
	lostDatapath   uint64
	lostSubscriber uint64
}

var (
	descSeen = prometheus.NewDesc("hubble_flows_seen_total",
		"Flow events read from the datapath and enriched by the agent.", nil, nil)
	descLost = prometheus.NewDesc("hubble_lost_events_total",
		"Flow events lost: perf_event_ring_buffer when the datapath's ring buffer was full (never reported), observer_events_queue when a subscriber read too slowly (dropped for it alone, summed over subscribers).",
		[]string{"source"}, nil)
	descSubscribers = prometheus.NewDesc("clustermesh_flow_subscribers",
		"Subscribers following the flows now (hubble observe --follow, relays, exporters).", nil, nil)
	descKept = prometheus.NewDesc("clustermesh_flow_ring_flows",
		"Flows kept for requests of past flows.", nil, nil)
	descCapacity = prometheus.NewDesc("clustermesh_flow_ring_capacity",
		"Flows the ring can keep (--hubble-event-buffer-capacity).", nil, nil)
)

// Collector returns the hub's Prometheus metrics, read at scrape time;
// register it on the agent's registry.
func (h *Hub) Collector() prometheus.Collector { return hubCollector{h} }

type hubCollector struct{ h *Hub }

func (c hubCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSeen, descLost, descSubscribers, descKept, descCapacity} {
		ch <- d
	}
}

func (c hubCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.h.Stats()
	ch <- prometheus.MustNewConstMetric(descSeen, prometheus.CounterValue, float64(s.Flows))
	ch <- prometheus.MustNewConstMetric(descLost, prometheus.CounterValue, float64(s.LostDatapath), "perf_event_ring_buffer")
	ch <- prometheus.MustNewConstMetric(descLost, prometheus.CounterValue, float64(s.LostSubscriber), "observer_events_queue")
	ch <- prometheus.MustNewConstMetric(descSubscribers, prometheus.GaugeValue, float64(s.Subscribers))
	ch <- prometheus.MustNewConstMetric(descKept, prometheus.GaugeValue, float64(s.Kept))
	ch <- prometheus.MustNewConstMetric(descCapacity, prometheus.GaugeValue, float64(s.Capacity))
}
