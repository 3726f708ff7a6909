package agentsync

import (
	"github.com/clustermesh/clustermesh/wire"
)

// Endpoint slices: Cilium v1.20 can export a cluster's global services as
// endpoint slices (zstd-compressed entries under
// cilium/state/endpointslices/v1/, with their own synced canary), as its
// cluster config's endpointSlicesExportMode says. This agent reads the
// services (cilium/state/services/v1/) and not the endpoint slices: a
// remote that exports both is read through its services; one that exports
// only endpoint slices has no services to read, so they are not waited for
// and status says why (docs/wire-format.md). Cilium's own agent does the
// same with its default service mode, prefer-legacy
// (pkg/clustermesh/remote_cluster.go, Run).

// UnsupportedEndpointSlices is the Kind of UnsupportedKind for endpoint
// slices.
const UnsupportedEndpointSlices = "endpointslices"

// setExportMode applies the remote's export mode m to the session about to
// start: the kinds it reads and, for a remote that exports no services,
// the removal of what it said as services before.
func (r *remote) setExportMode(m wire.EndpointSlicesExportMode) {
	var un []UnsupportedKind
	noServices := false
	switch {
	case r.self: // its identities and ipcache only
	case m == wire.ExportEndpointSlicesOnly:
		noServices = true
		un = []UnsupportedKind{{Kind: UnsupportedEndpointSlices, Reason: "the remote exports its global services only as endpoint slices (endpointSlicesExportMode " +
			string(m) + "), which this agent does not read: none of its backends are in global services here; " +
			"run the remote's Cilium with a clustermesh-service-v2 mode other than only-endpointslice so that it exports services too"}}
	case m == wire.ExportServicesAndEndpointSlices:
		un = []UnsupportedKind{{Kind: UnsupportedEndpointSlices, Reason: "ignored: the remote exports its global services both as services and as endpoint slices (endpointSlicesExportMode " +
			string(m) + "); this agent reads the services"}}
	}
	r.noServices.Store(noServices)
	r.mu.Lock()
	r.status.Unsupported = un
	r.mu.Unlock()
	if noServices {
		r.log.Warn("remote exports its global services only as endpoint slices, which this agent does not read: its backends are not used", "endpointSlicesExportMode", string(m))
		// What it said as services before is no longer said: a list would
		// sweep it, but none comes.
		r.agent.merger.DropServices(r.name)
		r.kinds[wire.Services].clear()
	}
}
