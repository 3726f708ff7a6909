package node

import (
	"context"
	"log/slog"
	"sync"

	"github.com/clustermesh/clustermesh/peerservice"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// meshPeers feeds Hubble's Peer service with every node of the mesh whose
// Observer a relay can read: the local cluster's nodes from the local
// state, and every remote's from its synced node entries.
type meshPeers struct {
	srv     *peerservice.Server
	cluster string
	local   *view
	log     *slog.Logger

	mu     sync.Mutex
	own    []statesource.Node // guarded by mu; the local cluster's
	remote []*wire.Node       // guarded by mu; the remotes'
}

func newMeshPeers(cluster string, local *view, log *slog.Logger) *meshPeers {
	return &meshPeers{srv: peerservice.NewServer(log, 0), cluster: cluster, local: local, log: log}
}

// setRemoteNodes takes every remote's nodes (agentsync's OnRemoteNodes);
// the local cluster's, read from its own apiserver, come from the local
// state instead.
func (m *meshPeers) setRemoteNodes(nodes []*wire.Node) {
	remote := make([]*wire.Node, 0, len(nodes))
	for _, n := range nodes {
		if n.Cluster != m.cluster {
			remote = append(remote, n)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.remote = remote
	m.publishLocked()
}

// run follows the local state's nodes until ctx is done.
func (m *meshPeers) run(ctx context.Context) error {
	return m.local.Run(ctx, func(st *statesource.State) {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.own = st.Nodes
		m.publishLocked()
	})
}

func (m *meshPeers) publishLocked() {
	peers, err := peerservice.Collect(m.cluster, m.own, m.remote)
	if err != nil {
		m.log.Warn("nodes left out of the peer service", "err", err)
	}
	m.srv.Update(peers)
}
