package observe

import (
	"github.com/prometheus/client_golang/prometheus"
)

// counts are a hub's metrics, kept under its lock.
type counts struct {
	flows          uint64
	byVerdict      map[[2]string]uint64 // verdict, direction
	drops          map[[3]string]uint64 // reason, source cluster, destination cluster
	lostDatapath   uint64
	lostSubscriber uint64
}

// UnknownCluster is the cluster label value of an end outside the mesh
// (an address the ipcache does not know).
const UnknownCluster = "unknown"

func clusterLabel(c string) string {
	if c == "" {
		return UnknownCluster
	}
	return c
}

func (c *counts) add(fl *Flow) {
	if c.byVerdict == nil {
		c.byVerdict = map[[2]string]uint64{}
		c.drops = map[[3]string]uint64{}
	}
	c.flows++
	c.byVerdict[[2]string{fl.Verdict, fl.Direction}]++
	if fl.Verdict == VerdictDropped {
		c.drops[[3]string{fl.DropReason, clusterLabel(fl.Source.Cluster), clusterLabel(fl.Destination.Cluster)}]++
	}
}

var (
	descFlows = prometheus.NewDesc("clustermesh_flows_total",
		"Flow events read from the datapath (every dropped packet, forwarded ones as sampled), by verdict and direction.",
		[]string{"verdict", "direction"}, nil)
	descDrops = prometheus.NewDesc("clustermesh_flow_drops_total",
		"Dropped packets reported by the datapath, by reason and by source and destination cluster (unknown: outside the mesh).",
		[]string{"reason", "source_cluster", "destination_cluster"}, nil)
	descLostDatapath = prometheus.NewDesc("clustermesh_flow_events_lost_total",
		"Flow events the datapath could not report because its ring buffer was full.", nil, nil)
	descLostSubscriber = prometheus.NewDesc("clustermesh_flow_subscriber_lost_total",
		"Flow events dropped for subscribers (clustermesh observe --follow) that read too slowly, summed over subscribers.", nil, nil)
	descSubscribers = prometheus.NewDesc("clustermesh_flow_subscribers",
		"Subscribers following the flows now.", nil, nil)
	descKept = prometheus.NewDesc("clustermesh_flow_ring_flows",
		"Flows kept for clustermesh observe --last.", nil, nil)
)

// Collector returns the hub's Prometheus metrics, read at scrape time;
// register it on the agent's registry.
func (h *Hub) Collector() prometheus.Collector { return hubCollector{h} }

type hubCollector struct{ h *Hub }

// Describe implements prometheus.Collector.
func (c hubCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFlows, descDrops, descLostDatapath, descLostSubscriber, descSubscribers, descKept} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c hubCollector) Collect(ch chan<- prometheus.Metric) {
	h := c.h
	h.mu.Lock()
	byVerdict := make(map[[2]string]uint64, len(h.counts.byVerdict))
	for k, v := range h.counts.byVerdict {
		byVerdict[k] = v
	}
	drops := make(map[[3]string]uint64, len(h.counts.drops))
	for k, v := range h.counts.drops {
		drops[k] = v
	}
	lostD, lostS, subs, kept := h.counts.lostDatapath, h.counts.lostSubscriber, len(h.subs), len(h.ring)
	h.mu.Unlock()

	for k, v := range byVerdict {
		ch <- prometheus.MustNewConstMetric(descFlows, prometheus.CounterValue, float64(v), k[0], k[1])
	}
	for k, v := range drops {
		ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(v), k[0], k[1], k[2])
	}
	ch <- prometheus.MustNewConstMetric(descLostDatapath, prometheus.CounterValue, float64(lostD))
	ch <- prometheus.MustNewConstMetric(descLostSubscriber, prometheus.CounterValue, float64(lostS))
	ch <- prometheus.MustNewConstMetric(descSubscribers, prometheus.GaugeValue, float64(subs))
	ch <- prometheus.MustNewConstMetric(descKept, prometheus.GaugeValue, float64(kept))
}
