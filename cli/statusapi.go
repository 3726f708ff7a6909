package cli

import (
	"context"

	"github.com/clustermesh/clustermesh/node"
)

// The agent's status schema, server and printer are package node's. These
// names stay for the Kubernetes commands (kube_*.go) while they move to
// kubemesh.

// AgentStatus is a node agent's status.
type AgentStatus = node.Status

// fetchStatus reads an agent's status from addr.
func fetchStatus(ctx context.Context, addr string) (AgentStatus, error) {
	return node.FetchStatus(ctx, addr)
}
