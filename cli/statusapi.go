package cli

import (
	"context"
	"net/http"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/k8spolicy"
	"github.com/clustermesh/clustermesh/wireguard"
)

// AgentStatus is what `clustermesh agent` serves on --status-addr and
// `clustermesh status` shows: agentsync's status, with the same JSON fields
// as before, plus the WireGuard device's status under "wireguard" — absent
// when encryption is off (and from agents that predate it).
type AgentStatus struct {
	agentsync.Status
	WireGuard *wireguard.Status `json:"wireguard,omitempty"`
	// Policy is the policy enforcer's status, absent without --policy-dir.
	Policy *enforcer.Status `json:"policy,omitempty"`
	// KubernetesPolicy is the cluster's policy objects' watcher, absent
	// unless the agent reads them.
	KubernetesPolicy *k8spolicy.Status `json:"kubernetesPolicy,omitempty"`
}

// serveStatus serves the extended status on addr until ctx is done, and
// the extra handlers (the flows) beside it.
func serveStatus(ctx context.Context, addr string, status func() AgentStatus, extra map[string]http.Handler) error {
	return agentsync.ServeJSONWith(ctx, addr, func() any { return status() }, extra)
}

// fetchStatus reads an agent's extended status from addr.
func fetchStatus(ctx context.Context, addr string) (AgentStatus, error) {
	var st AgentStatus
	return st, agentsync.FetchJSON(ctx, addr, &st)
}
