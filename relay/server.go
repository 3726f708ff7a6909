package relay

import (
	"cmp"
	"context"
	"log/slog"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// maxUnavailableReported bounds the names ServerStatus lists, as Hubble's
// relay does (their number is always complete).
const maxUnavailableReported = 10

// Server is Hubble's Observer service for the whole mesh: every call is
// answered from every peer of the pool. Relay.Run serves it with the
// relay's codec, which passes the peers' responses on undecoded (another
// gRPC server could not send them).
type Server struct {
	observerpb.UnimplementedObserverServer

	cfg     Config
	log     *slog.Logger
	pool    *pool
	started time.Time
	metrics *metrics
}

// outgoing passes the caller's metadata on to the peers.
func outgoing(ctx context.Context) context.Context {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		return metadata.NewOutgoingContext(ctx, md)
	}
	return ctx
}

// Version is the relay's version as ServerStatus reports it.
func Version() string {
	v := "(devel)"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		v = bi.Main.Version
	}
	return "clustermesh-relay " + v
}

// eachPeer calls f for every peer that is not unavailable, in parallel,
// each within the request timeout, and waits for them.
func (s *Server) eachPeer(ctx context.Context, peers []peerState, f func(ctx context.Context, i int, cl observerpb.ObserverClient)) {
	ctx = outgoing(ctx)
	var wg sync.WaitGroup
	for i, p := range peers {
		if p.unavailable() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
			defer cancel()
			f(ctx, i, observerpb.NewObserverClient(p.conn))
		}()
	}
	wg.Wait()
}

// ServerStatus sums the peers' status; the peers that do not answer are
// counted unavailable.
func (s *Server) ServerStatus(ctx context.Context, req *observerpb.ServerStatusRequest) (*observerpb.ServerStatusResponse, error) {
	peers := s.pool.list(false)
	answers := make([]*observerpb.ServerStatusResponse, len(peers))
	s.eachPeer(ctx, peers, func(ctx context.Context, i int, cl observerpb.ObserverClient) {
		st, err := cl.ServerStatus(ctx, req)
		if err != nil {
			s.log.Info("peer did not answer ServerStatus", "peer", peers[i].peer.Name, "error", err)
			return
		}
		answers[i] = st
	})
	resp := &observerpb.ServerStatusResponse{Version: Version()}
	var connected, unavailable uint32
	for i, st := range answers {
		if st == nil {
			unavailable++
			if len(resp.UnavailableNodes) < maxUnavailableReported {
				resp.UnavailableNodes = append(resp.UnavailableNodes, peers[i].peer.Name)
			}
			continue
		}
		connected++
		resp.NumFlows += st.NumFlows
		resp.MaxFlows += st.MaxFlows
		resp.SeenFlows += st.SeenFlows
		resp.FlowsRate += st.FlowsRate
		resp.UptimeNs = max(resp.UptimeNs, st.UptimeNs)
	}
	resp.NumConnectedNodes = wrapperspb.UInt32(connected)
	resp.NumUnavailableNodes = wrapperspb.UInt32(unavailable)
	return resp, ctx.Err()
}

// GetNodes lists every peer (cluster/node) with its state: connected and
// its numbers when it answers, unavailable when it does not, gone when no
// peer service announces it any more (for the gone retention).
func (s *Server) GetNodes(ctx context.Context, _ *observerpb.GetNodesRequest) (*observerpb.GetNodesResponse, error) {
	peers := s.pool.list(true)
	nodes := make([]*observerpb.Node, len(peers))
	for i, p := range peers {
		nodes[i] = &observerpb.Node{
			Name: p.peer.Name, Address: p.peer.Address, State: p.nodeState(),
			Tls: &observerpb.TLS{Enabled: s.pool.tls != nil, ServerName: p.peer.TLSServerName},
		}
		if p.gone {
			peers[i].conn = nil // not asked
		}
	}
	s.eachPeer(ctx, peers, func(ctx context.Context, i int, cl observerpb.ObserverClient) {
		st, err := cl.ServerStatus(ctx, &observerpb.ServerStatusRequest{})
		n := nodes[i]
		if err != nil {
			n.State = relaypb.NodeState_NODE_UNAVAILABLE
			return
		}
		n.State, n.Version, n.UptimeNs = relaypb.NodeState_NODE_CONNECTED, st.Version, st.UptimeNs
		n.NumFlows, n.MaxFlows, n.SeenFlows = st.NumFlows, st.MaxFlows, st.SeenFlows
	})
	return &observerpb.GetNodesResponse{Nodes: nodes}, ctx.Err()
}

// GetNamespaces is the union of the peers' namespaces, by cluster and name.
func (s *Server) GetNamespaces(ctx context.Context, req *observerpb.GetNamespacesRequest) (*observerpb.GetNamespacesResponse, error) {
	peers := s.pool.list(false)
	var mu sync.Mutex
	seen := map[[2]string]bool{}
	var out []*observerpb.Namespace
	s.eachPeer(ctx, peers, func(ctx context.Context, i int, cl observerpb.ObserverClient) {
		resp, err := cl.GetNamespaces(ctx, req)
		if err != nil {
			s.log.Info("peer did not answer GetNamespaces", "peer", peers[i].peer.Name, "error", err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, ns := range resp.GetNamespaces() {
			if k := [2]string{ns.Cluster, ns.Namespace}; !seen[k] {
				seen[k] = true
				out = append(out, ns)
			}
		}
	})
	slices.SortFunc(out, func(a, b *observerpb.Namespace) int {
		return cmp.Or(cmp.Compare(a.Cluster, b.Cluster), cmp.Compare(a.Namespace, b.Namespace))
	})
	return &observerpb.GetNamespacesResponse{Namespaces: out}, ctx.Err()
}

// GetAgentEvents is not relayed (as in Hubble's relay).
func (s *Server) GetAgentEvents(*observerpb.GetAgentEventsRequest, grpc.ServerStreamingServer[observerpb.GetAgentEventsResponse]) error {
	return status.Error(codes.Unimplemented, "the relay does not serve agent events: ask an agent")
}

// GetDebugEvents is not relayed (as in Hubble's relay).
func (s *Server) GetDebugEvents(*observerpb.GetDebugEventsRequest, grpc.ServerStreamingServer[observerpb.GetDebugEventsResponse]) error {
	return status.Error(codes.Unimplemented, "the relay does not serve debug events: ask an agent")
}

// metrics are the relay's counters, read at scrape time.
type metrics struct {
	requests atomic.Uint64 // GetFlows calls
	flows    atomic.Uint64 // responses sent to clients
}
