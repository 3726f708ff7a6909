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
	own    []peerservice.Peer // guarded by mu; the local cluster's
	remote []peerservice.Peer // guarded by mu; the remotes'
}

func newMeshPeers(cluster string, local *view, log *slog.Logger) *meshPeers {
	return &meshPeers{srv: peerservice.NewServer(log, 0), cluster: cluster, local: local, log: log}
}

// setRemoteNodes takes every remote's nodes (agentsync's OnRemoteNodes).
func (m *meshPeers) setRemoteNodes(nodes []*wire.Node) {
	peers := make([]peerservice.Peer, 0, len(nodes))
	for _, n := range nodes {
		if n.Cluster == m.cluster {
			continue // the local state says them
		}
		p, err := peerservice.FromNode(n)
		if err != nil {
			m.log.Warn("remote node left out of the peer service", "err", err)
			continue
		}
		peers = append(peers, p)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.remote = peers
	m.publishLocked()
}

// run follows the local state's nodes until ctx is done.
func (m *meshPeers) run(ctx context.Context) error {
	return m.local.Run(ctx, func(st *statesource.State) {
		peers := make([]peerservice.Peer, 0, len(st.Nodes))
		for i := range st.Nodes {
			p, err := peerservice.FromLocalNode(m.cluster, &st.Nodes[i])
			if err != nil {
				m.log.Warn("node left out of the peer service", "err", err)
				continue
			}
			peers = append(peers, p)
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		m.own = peers
		m.publishLocked()
	})
}

func (m *meshPeers) publishLocked() {
	all := make([]peerservice.Peer, 0, len(m.own)+len(m.remote))
	m.srv.Update(append(append(all, m.own...), m.remote...))
}
