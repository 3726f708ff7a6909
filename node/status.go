package node

import (
	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/flowexport"
	"github.com/clustermesh/clustermesh/k8spolicy"
	"github.com/clustermesh/clustermesh/observe"
	"github.com/clustermesh/clustermesh/wireguard"
)

// Status is what a node agent serves on its status address and
// `clustermesh status` shows: agentsync's status, with its JSON fields
// unchanged, plus the parts the node runs beside it, each absent when that
// part is off (and from agents that predate it).
type Status struct {
	agentsync.Status
	// WireGuard is the WireGuard device's status, absent when encryption
	// is off.
	WireGuard *wireguard.Status `json:"wireguard,omitempty"`
	// Policy is the policy enforcer's status, absent without a policy.
	Policy *enforcer.Status `json:"policy,omitempty"`
	// KubernetesPolicy is the cluster's policy objects' watcher, absent
	// unless the agent reads them.
	KubernetesPolicy *k8spolicy.Status `json:"kubernetesPolicy,omitempty"`
	// Hubble is the flow server's status, absent when the agent observes
	// no flows.
	Hubble *HubbleStatus `json:"hubble,omitempty"`
}

// HubbleStatus is the flow server: where it serves, the flows it saw and
// keeps, what was lost, and the observers following now.
type HubbleStatus struct {
	observe.Stats
	Socket  string `json:"socket,omitempty"`
	Address string `json:"address,omitempty"`
	// Export is the flow export's status, absent without its
	// configuration.
	Export *flowexport.Status `json:"export,omitempty"`
}

// Status returns the node's status: safe to call at any time, before Run
// and after it returned.
func (n *Node) Status() Status {
	st := Status{Status: n.sync.Status()}
	if n.wg != nil {
		s := n.wg.Status()
		st.WireGuard = &s
	}
	if n.enf != nil {
		s := n.enf.Status()
		st.Policy = &s
	}
	if n.kube != nil {
		s := n.kube.Status()
		st.KubernetesPolicy = &s
	}
	if n.hub != nil {
		st.Hubble = &HubbleStatus{Stats: n.hub.Stats(), Socket: n.cfg.Hubble.SocketPath, Address: n.cfg.Hubble.ListenAddress}
		if n.export != nil {
			e := n.export.Status()
			st.Hubble.Export = &e
		}
	}
	return st
}
