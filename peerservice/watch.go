package peerservice

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"time"

	"github.com/cenkalti/backoff/v4"
	peerpb "github.com/cilium/cilium/api/v1/peer"
	"google.golang.org/grpc"
)

// DefaultResyncGrace is how long a Watcher keeps the peers of its previous
// stream that a new stream has not (yet) announced.
const DefaultResyncGrace = 5 * time.Second

// Watcher follows one peer service and tells its complete set of peers
// after every change. It reconnects forever, with backoff; while it is
// disconnected the last set stays in force. A new stream announces every
// peer again: the peers it has not announced within ResyncGrace are dropped.
type Watcher struct {
	// Conn reaches the peer service (unix socket or TCP with mutual TLS).
	Conn grpc.ClientConnInterface
	// Target names it in logs and errors.
	Target string
	// OnChange gets the whole set after every change, sorted by name; it
	// is called from Run's goroutine and must not keep the slice.
	OnChange func([]Peer)
	// ResyncGrace is DefaultResyncGrace when zero.
	ResyncGrace time.Duration
	// MaxBackoff bounds the wait between streams (30s when zero).
	MaxBackoff time.Duration
	// Log may be nil.
	Log *slog.Logger
}

// Run follows the service until ctx is done, then returns nil.
func (w *Watcher) Run(ctx context.Context) error {
	log := cmp.Or(w.Log, slog.Default()).With("peer_service", w.Target)
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 100*time.Millisecond, cmp.Or(w.MaxBackoff, 30*time.Second), 0
	state := &watchState{w: w, current: map[string]Peer{}}
	for ctx.Err() == nil {
		started := time.Now()
		err := state.stream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) > time.Minute {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		log.Warn("peer service stream ended; the last peers stay in force", "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	return nil
}

// watchState is what a Watcher knows across its streams.
type watchState struct {
	w        *Watcher
	current  map[string]Peer // the last stream's set
	previous map[string]Peer // the stream before, within its grace
	told     map[string]Peer // what OnChange last got
}

// stream runs one Notify stream until it ends.
func (s *watchState) stream(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cl := peerpb.NewPeerClient(s.w.Conn)
	st, err := cl.Notify(ctx, &peerpb.NotifyRequest{})
	if err != nil {
		return fmt.Errorf("opening the peer stream of %s: %w", s.w.Target, err)
	}
	if len(s.current) > 0 {
		s.previous, s.current = s.current, map[string]Peer{}
	}
	grace := time.NewTimer(cmp.Or(s.w.ResyncGrace, DefaultResyncGrace))
	defer grace.Stop()
	recv := make(chan *peerpb.ChangeNotification)
	errc := make(chan error, 1)
	go func() { errc <- receive(ctx, st, recv) }()
	for {
		select {
		case cn := <-recv:
			s.apply(cn)
		case <-grace.C:
			s.previous = nil
			s.tell()
		case err := <-errc:
			return err
		}
	}
}

// receive passes every notification of st to recv until st ends.
func receive(ctx context.Context, st grpc.ServerStreamingClient[peerpb.ChangeNotification], recv chan<- *peerpb.ChangeNotification) error {
	for {
		cn, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return errors.New("the peer service closed the stream")
		}
		if err != nil {
			return fmt.Errorf("reading the peer stream: %w", err)
		}
		select {
		case recv <- cn:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *watchState) apply(cn *peerpb.ChangeNotification) {
	p, err := fromNotification(cn)
	switch {
	case cn.GetType() == peerpb.ChangeNotificationType_PEER_DELETED:
		delete(s.current, cn.GetName())
		delete(s.previous, cn.GetName())
	case err != nil:
		cmp.Or(s.w.Log, slog.Default()).Warn("peer notification ignored", "peer_service", s.w.Target, "error", err)
		return
	default:
		s.current[p.Name] = p
	}
	s.tell()
}

// tell calls OnChange with current ∪ previous when it changed.
func (s *watchState) tell() {
	set := maps.Clone(s.current)
	for n, p := range s.previous {
		if _, ok := set[n]; !ok {
			set[n] = p
		}
	}
	if s.told != nil && maps.Equal(set, s.told) {
		return
	}
	s.told = set
	if s.w.OnChange != nil {
		s.w.OnChange(sortedPeers(set))
	}
}
