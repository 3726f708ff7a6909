package relay

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/peerservice"
)

// pool holds a connection to every peer the peer services announce (the
// union of their sets), and the peers that went, for a while. Connections
// reconnect by themselves (gRPC's backoff); every change of the set or of a
// connection's state is broadcast (changes).
type pool struct {
	log           *slog.Logger
	tls           *tls.Config // nil: plaintext peers
	dialTimeout   time.Duration
	maxBackoff    time.Duration
	goneRetention time.Duration

	ctx    context.Context // ends the state watchers
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	sources map[int][]peerservice.Peer
	members map[string]*member
	gone    map[string]goneMember
	changed chan struct{} // closed and replaced on every change
}

// member is a peer and its connection.
type member struct {
	peer peerservice.Peer
	conn *grpc.ClientConn
}

// goneMember is a peer no peer service announces any more.
type goneMember struct {
	peer peerservice.Peer
	at   time.Time
}

// peerState is a peer as one request sees it.
type peerState struct {
	peer  peerservice.Peer
	conn  *grpc.ClientConn // nil for a gone peer
	state connectivity.State
	gone  bool
}

// nodeState is the relay's word for the peer's connection: connected while
// its connection is ready or being made, unavailable while it fails, gone.
func (p peerState) nodeState() relaypb.NodeState {
	switch {
	case p.gone:
		return relaypb.NodeState_NODE_GONE
	case p.unavailable():
		return relaypb.NodeState_NODE_UNAVAILABLE
	default:
		return relaypb.NodeState_NODE_CONNECTED
	}
}

// unavailable: the connection failed and waits for its next attempt; a
// request does not wait for it.
func (p peerState) unavailable() bool {
	return p.conn == nil || p.state == connectivity.TransientFailure || p.state == connectivity.Shutdown
}

func newPool(log *slog.Logger, tlsCfg *tls.Config, dialTimeout, maxBackoff, goneRetention time.Duration) *pool {
	ctx, cancel := context.WithCancel(context.Background())
	return &pool{
		log: log, tls: tlsCfg, dialTimeout: dialTimeout, maxBackoff: maxBackoff, goneRetention: goneRetention,
		ctx: ctx, cancel: cancel,
		sources: map[int][]peerservice.Peer{}, members: map[string]*member{}, gone: map[string]goneMember{},
		changed: make(chan struct{}),
	}
}

// close closes every connection and waits for the state watchers.
func (p *pool) close() {
	p.cancel()
	p.mu.Lock()
	for _, m := range p.members {
		m.conn.Close()
	}
	p.members = map[string]*member{}
	p.mu.Unlock()
	p.wg.Wait()
}

// setSource makes peers the set of peer service i, and reconciles the
// connections with the union of every service's set.
func (p *pool) setSource(i int, peers []peerservice.Peer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ctx.Err() != nil {
		return
	}
	p.sources[i] = slices.Clone(peers)
	want := map[string]peerservice.Peer{}
	for _, k := range slices.Sorted(maps.Keys(p.sources)) {
		for _, peer := range p.sources[k] {
			if _, ok := want[peer.Name]; !ok {
				want[peer.Name] = peer
			}
		}
	}
	now := time.Now()
	for name, m := range p.members {
		if w, ok := want[name]; !ok || w != m.peer {
			m.conn.Close()
			delete(p.members, name)
			if !ok {
				p.gone[name] = goneMember{peer: m.peer, at: now}
				p.log.Info("peer gone", "peer", name)
			}
		}
	}
	for name, peer := range want {
		if _, ok := p.members[name]; ok {
			continue
		}
		delete(p.gone, name)
		conn, err := p.dial(peer)
		if err != nil {
			p.log.Warn("peer left out", "peer", name, "address", peer.Address, "error", err)
			continue
		}
		p.members[name] = &member{peer: peer, conn: conn}
		p.wg.Add(1)
		go p.watchState(conn)
	}
	p.broadcastLocked()
}

// dial makes the peer's connection (it connects in the background).
func (p *pool) dial(peer peerservice.Peer) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if p.tls != nil {
		cfg := p.tls.Clone()
		cfg.ServerName = cmp.Or(peer.TLSServerName, ca.ObserverServerName(peer.Cluster(), peer.Node()))
		creds = credentials.NewTLS(cfg)
	}
	bo := backoff.DefaultConfig
	bo.BaseDelay, bo.MaxDelay = 100*time.Millisecond, p.maxBackoff
	conn, err := grpc.NewClient(peer.Address,
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: p.dialTimeout}),
		grpc.WithIdleTimeout(0),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes)),
	)
	if err != nil {
		return nil, fmt.Errorf("dialing peer %s at %s: %w", peer.Name, peer.Address, err)
	}
	conn.Connect()
	return conn, nil
}

// maxMessageBytes bounds one message from a peer (a flow is a few KiB).
const maxMessageBytes = 16 << 20

// watchState broadcasts every state change of conn, and reconnects it when
// it goes idle, until it is closed.
func (p *pool) watchState(conn *grpc.ClientConn) {
	defer p.wg.Done()
	for {
		s := conn.GetState()
		if s == connectivity.Shutdown {
			return
		}
		if s == connectivity.Idle {
			conn.Connect()
		}
		if !conn.WaitForStateChange(p.ctx, s) {
			return
		}
		p.mu.Lock()
		p.broadcastLocked()
		p.mu.Unlock()
	}
}

func (p *pool) broadcastLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// changes is closed at the next change of the set or of a connection.
func (p *pool) changes() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// list returns every peer and its state, and the peers gone within the
// retention, sorted by name.
func (p *pool) list(withGone bool) []peerState {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]peerState, 0, len(p.members)+len(p.gone))
	for _, m := range p.members {
		out = append(out, peerState{peer: m.peer, conn: m.conn, state: m.conn.GetState()})
	}
	now := time.Now()
	for name, g := range p.gone {
		if now.Sub(g.at) > p.goneRetention {
			delete(p.gone, name)
			continue
		}
		if withGone {
			out = append(out, peerState{peer: g.peer, gone: true})
		}
	}
	slices.SortFunc(out, func(a, b peerState) int { return cmp.Compare(a.peer.Name, b.peer.Name) })
	return out
}
