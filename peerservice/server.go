package peerservice

import (
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	peerpb "github.com/cilium/cilium/api/v1/peer"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultMaxBuffer is how many notifications a stream may have waiting
// before it is ended (ErrFellBehind): a mesh of that many nodes can be
// announced to a new stream at once, with room for the changes behind.
const DefaultMaxBuffer = 65536

// Server is Hubble's Peer service over the set of peers it is given.
// Register it on a grpc.Server with Register; feed it with Update.
type Server struct {
	peerpb.UnimplementedPeerServer

	log       *slog.Logger
	maxBuffer int

	mu      sync.Mutex
	peers   map[string]Peer
	streams map[*stream]struct{}
}

// NewServer returns a server with no peers. maxBuffer bounds each stream's
// waiting notifications (DefaultMaxBuffer when zero); log may be nil.
func NewServer(log *slog.Logger, maxBuffer int) *Server {
	if log == nil {
		log = slog.Default()
	}
	if maxBuffer <= 0 {
		maxBuffer = DefaultMaxBuffer
	}
	return &Server{log: log, maxBuffer: maxBuffer, peers: map[string]Peer{}, streams: map[*stream]struct{}{}}
}

// Register registers the Peer service on g.
func (s *Server) Register(g *grpc.Server) { peerpb.RegisterPeerServer(g, s) }

// Update makes peers the complete current set: every stream is told the
// peers that appeared (added), went (deleted) or changed address or server
// name (updated). Invalid peers are left out and logged; of two peers with
// one name the last counts.
func (s *Server) Update(peers []Peer) {
	next := make(map[string]Peer, len(peers))
	for _, p := range peers {
		if err := p.Check(); err != nil {
			s.log.Warn("peer left out of the peer service", "error", err)
			continue
		}
		next[p.Name] = p
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	changes := diff(s.peers, next)
	s.peers = next
	if len(changes) == 0 {
		return
	}
	for st := range s.streams {
		st.push(changes, s.maxBuffer)
	}
}

// Peers returns the current set, sorted by name.
func (s *Server) Peers() []Peer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sortedPeers(s.peers)
}

// Notify streams the peers: every current one as added, then each change,
// until the client goes or reads too slowly (ErrFellBehind, as a
// ResourceExhausted status).
func (s *Server) Notify(_ *peerpb.NotifyRequest, srv grpc.ServerStreamingServer[peerpb.ChangeNotification]) error {
	st := &stream{wake: make(chan struct{}, 1)}
	s.mu.Lock()
	for _, p := range sortedPeers(s.peers) {
		st.queue = append(st.queue, notification(p, peerpb.ChangeNotificationType_PEER_ADDED))
	}
	st.wake <- struct{}{}
	s.streams[st] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.streams, st)
		s.mu.Unlock()
	}()
	ctx := srv.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-st.wake:
		}
		batch, behind := st.take()
		if behind {
			return status.Errorf(codes.ResourceExhausted, "%v: more than %d notifications waiting; reconnect for the whole set", ErrFellBehind, s.maxBuffer)
		}
		for _, cn := range batch {
			if err := srv.Send(cn); err != nil {
				return fmt.Errorf("sending peer %s: %w", cn.Name, err)
			}
		}
	}
}

// stream is one Notify call's queue.
type stream struct {
	wake   chan struct{} // one token: the queue has something, or fell behind
	mu     sync.Mutex
	queue  []*peerpb.ChangeNotification
	behind bool
}

func (st *stream) push(changes []*peerpb.ChangeNotification, max int) {
	st.mu.Lock()
	if len(st.queue)+len(changes) > max {
		st.behind, st.queue = true, nil
	} else {
		st.queue = append(st.queue, changes...)
	}
	st.mu.Unlock()
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

func (st *stream) take() ([]*peerpb.ChangeNotification, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	q := st.queue
	st.queue = nil
	return q, st.behind
}

// diff is the notifications that take a stream from old to next, in name
// order: deletions first, so that a client never holds more than both sets.
func diff(old, next map[string]Peer) []*peerpb.ChangeNotification {
	var out []*peerpb.ChangeNotification
	for _, p := range sortedPeers(old) {
		if _, ok := next[p.Name]; !ok {
			out = append(out, notification(p, peerpb.ChangeNotificationType_PEER_DELETED))
		}
	}
	for _, p := range sortedPeers(next) {
		switch o, ok := old[p.Name]; {
		case !ok:
			out = append(out, notification(p, peerpb.ChangeNotificationType_PEER_ADDED))
		case o != p:
			out = append(out, notification(p, peerpb.ChangeNotificationType_PEER_UPDATED))
		}
	}
	return out
}

func sortedPeers(m map[string]Peer) []Peer {
	return slices.SortedFunc(maps.Values(m), func(a, b Peer) int { return cmp.Compare(a.Name, b.Name) })
}

var (
	descPeers = prometheus.NewDesc("clustermesh_peerservice_peers",
		"Observer peers the peer service announces (every node of the mesh with an address).", nil, nil)
	descStreams = prometheus.NewDesc("clustermesh_peerservice_streams",
		"Notify streams open (relays following the peer list).", nil, nil)
)

// Collector returns the server's Prometheus metrics, read at scrape time.
func (s *Server) Collector() prometheus.Collector { return collector{s} }

type collector struct{ s *Server }

func (c collector) Describe(ch chan<- *prometheus.Desc) { ch <- descPeers; ch <- descStreams }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	c.s.mu.Lock()
	peers, streams := len(c.s.peers), len(c.s.streams)
	c.s.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(peers))
	ch <- prometheus.MustNewConstMetric(descStreams, prometheus.GaugeValue, float64(streams))
}
