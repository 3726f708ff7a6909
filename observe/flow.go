// Package observe owns turning the datapath's flow events into enriched,
// filterable flows for operators, the way Hubble does for Cilium: a Hub reads
// flows.Flow events from a Source, names their ends (cluster, namespace,
// pod, identity labels) through an Enricher, keeps the last flows in a ring,
// fans them out to subscribers that never slow the reader down, counts them
// as Prometheus metrics, and serves them as NDJSON over HTTP (Handler, and
// the client Observe).
//
// It knows nothing of etcd or agentsync: the agent implements Enricher from
// what it holds and mounts Handler on its status address.
package observe

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/wire"
)

// Enricher names the ends of a flow. The agent implements it from the
// identities, ipcache entries and local endpoints it holds. Its methods are
// called for every flow on the reading goroutine: they must be fast (map
// lookups) and safe for concurrent use with the agent's own updates.
type Enricher interface {
	// Identity returns the labels of a numeric security identity.
	Identity(id uint32) (wire.Labels, bool)
	// ClusterName returns the name of a cluster id, "" if unknown.
	ClusterName(id uint16) string
	// Pod returns the namespace and name of the pod with address ip.
	Pod(ip netip.Addr) (namespace, pod string, ok bool)
}

// Verdicts, as in Flow.Verdict.
const (
	VerdictForwarded = "FORWARDED"
	VerdictDropped   = "DROPPED"
)

// Flow is one enriched flow event, as served in JSON (field names are
// stable).
type Flow struct {
	Time time.Time `json:"time"`
	// Verdict is FORWARDED or DROPPED.
	Verdict string `json:"verdict"`
	// DropReason says why a DROPPED packet was dropped: policy-denied or
	// invalid-packet; absent for FORWARDED.
	DropReason string `json:"drop_reason,omitempty"`
	// Direction is relative to the local endpoint the policy programs
	// watched: egress when it sent the packet (Source is the endpoint),
	// ingress when it receives it (Destination is the endpoint).
	Direction string `json:"direction"`
	// Protocol is TCP, UDP, SCTP, ICMP, ICMPv6 or proto(N).
	Protocol string `json:"protocol"`
	// IsReply is set for a reply of a tracked flow.
	IsReply     bool     `json:"is_reply"`
	Source      Endpoint `json:"source"`
	Destination Endpoint `json:"destination"`
	// Bytes is the packet's length.
	Bytes uint32 `json:"bytes"`
	// Sampled is set for a forwarded packet reported by sampling (one in
	// the datapath's sample rate); unsampled FORWARDED flows started a
	// connection.
	Sampled bool `json:"sampled"`
}

// Endpoint is one end of a flow.
type Endpoint struct {
	// Cluster is the name of the endpoint's cluster; absent when unknown
	// (an address outside the mesh).
	Cluster string `json:"cluster,omitempty"`
	// Namespace is the pod's namespace, or else its identity's namespace
	// label.
	Namespace string `json:"namespace,omitempty"`
	// Pod is the pod's name when the address is a known pod.
	Pod string `json:"pod,omitempty"`
	// Identity is the numeric security identity (2, world, for an address
	// the ipcache does not know).
	Identity uint32 `json:"identity"`
	IP       string `json:"ip"`
	// Port is absent for portless protocols and fragments.
	Port uint16 `json:"port,omitempty"`
	// Labels are the identity's labels, "source:key=value", sorted.
	Labels []string `json:"labels,omitempty"`
}

// Protocol names of Flow.Protocol beyond the datapath's.
func protocolName(p datapath.Protocol) string {
	switch p {
	case 1:
		return "ICMP"
	case 58:
		return "ICMPv6"
	}
	return p.String()
}

// Enrich turns a datapath flow into a Flow; e may be nil (only identities
// and addresses are then known).
func Enrich(e Enricher, f flows.Flow) Flow {
	out := Flow{
		Time:        f.Time,
		Verdict:     verdictName(f.Verdict),
		Direction:   f.Direction.String(),
		Protocol:    protocolName(f.Protocol),
		IsReply:     f.Reply,
		Source:      endpoint(e, f.Src, f.SrcIdentity, f.SrcCluster),
		Destination: endpoint(e, f.Dst, f.DstIdentity, f.DstCluster),
		Bytes:       f.Bytes,
		Sampled:     f.Sampled,
	}
	if f.Verdict == flows.VerdictDropped {
		out.DropReason = f.DropReason.String()
	}
	return out
}

func verdictName(v flows.Verdict) string {
	switch v {
	case flows.VerdictForwarded:
		return VerdictForwarded
	case flows.VerdictDropped:
		return VerdictDropped
	}
	return v.String()
}

func endpoint(e Enricher, ap netip.AddrPort, id uint32, cluster uint16) Endpoint {
	ep := Endpoint{Identity: id, IP: ap.Addr().String(), Port: ap.Port()}
	var ls wire.Labels
	if e != nil {
		if l, ok := e.Identity(id); ok {
			ls = l
			ep.Labels = make([]string, len(l))
			for i, x := range l {
				ep.Labels[i] = x.String()
			}
			sortStrings(ep.Labels)
		}
		ep.Cluster = e.ClusterName(cluster)
		if ap.Addr().IsValid() {
			if ns, pod, ok := e.Pod(ap.Addr().Unmap()); ok {
				ep.Namespace, ep.Pod = ns, pod
			}
		}
	}
	if ep.Cluster == "" && cluster != 0 {
		// A cluster the enricher cannot name: its identity's cluster label
		// (validated against the cluster it came from), else its id.
		if name, ok := ls.Get(wire.ClusterLabel); ok {
			ep.Cluster = name
		} else {
			ep.Cluster = fmt.Sprintf("cluster-%d", cluster)
		}
	}
	if ep.Namespace == "" {
		ep.Namespace, _ = ls.Get(wire.NamespaceLabel)
	}
	return ep
}

// sortStrings sorts a short slice in place (insertion sort: label sets are
// small, and this avoids an allocation per flow).
func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}
