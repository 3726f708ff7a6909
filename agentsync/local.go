package agentsync

import (
	"fmt"

	"github.com/clustermesh/clustermesh/wire"
)

// The local cluster's own apiserver: a config in ConfigDir named after the
// local cluster is read like a remote's, for two kinds only — the identities
// of the cluster's pods (policy needs their numbers and labels) and its
// ipcache (the policy programs need the identity of every local peer
// address). Its nodes and services are not read: the local state source has
// them. It is not a peer: it reserves no cluster id beside the local one,
// and Status reports it apart (Status.Local).
//
// With a scoped export mode the apiserver's state holds only the exported
// endpoints; it then also publishes the complete local view, which only
// the cluster's own user reads (wire.LocalViewPrefix), and says so in its
// cluster config (capabilities.localView). The own apiserver's identities
// and ipcache are then read from the view: the same sessions, canaries
// (the view's own), mark-and-sweep and limits, every key mapped back to
// the state key it stands for and validated as one (layout.stateKey). An
// apiserver that does not announce the view is read under cilium/state/.

// layoutFor is where a session reads the remote whose config is cfg.
func (r *remote) layoutFor(cfg wire.ClusterConfig) layout {
	return layout{cached: cfg.Capabilities.Cached, local: r.self && !cfg.Capabilities.Cached && cfg.Capabilities.LocalView}
}

// IdentityObserver is told about the identities of every cluster. Calls
// come from the remotes' goroutines, with their kind's lock held: an
// implementation records and returns (it must not call back into the
// Agent).
type IdentityObserver interface {
	// UpsertIdentity: cluster holds id with labels (new, or relabelled).
	UpsertIdentity(cluster string, id uint32, labels wire.Labels)
	// DeleteIdentity: cluster no longer holds id.
	DeleteIdentity(cluster string, id uint32)
}

// selfKinds are the kinds read from the local cluster's own apiserver.
var selfKinds = []wire.Kind{wire.Identities, wire.IPCache}

// kindsButServices are the kinds read from a remote that exports its
// services only as endpoint slices (see exports.go).
var kindsButServices = []wire.Kind{wire.Nodes, wire.Identities, wire.IPCache}

// watchedKinds are the kinds this remote lists and watches.
func (r *remote) watchedKinds() []wire.Kind {
	if r.self {
		return selfKinds
	}
	if r.noServices.Load() {
		return kindsButServices
	}
	return wire.Kinds
}

// admitSelf checks that the local cluster's own apiserver says it is the
// local cluster.
func (r *remote) admitSelf(c wire.Cluster) error {
	if c.ID != r.agent.cfg.ClusterID {
		return fmt.Errorf("%w: the config %s (this cluster's own apiserver) reaches cluster id %d, but this agent runs with --cluster-id %d: point it at this cluster's apiserver or fix the id",
			ErrClusterIDConflict, r.name, c.ID, r.agent.cfg.ClusterID)
	}
	return nil
}

// clusterID is the id the remote's entries are merged under: its reserved
// one, or the local id for the local cluster's own apiserver.
func (r *remote) clusterID() uint16 {
	if r.self {
		return uint16(r.agent.cfg.ClusterID)
	}
	return uint16(r.agent.reservedID(r.name))
}

// ClusterName returns the name of the cluster with id: the local cluster or
// a connected remote; "" when none.
func (a *Agent) ClusterName(id uint16) string {
	if uint32(id) == a.cfg.ClusterID {
		return a.cfg.ClusterName
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.reserved[uint32(id)]
}
