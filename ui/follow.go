package ui

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Backoff bounds of the flow stream's reconnection.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// follow reads the flows of the map's window, then every new one, into the
// map until ctx is done; a broken stream is opened again after a backoff,
// from the last flow it read.
func (s *Server) follow(ctx context.Context) {
	since := time.Now().Add(-s.m.Window())
	backoff := minBackoff
	for ctx.Err() == nil {
		last, read, err := s.followOnce(ctx, since)
		if !last.IsZero() {
			since = last
		}
		if ctx.Err() != nil {
			return
		}
		s.setStream(false, err)
		s.metrics.reconnects.Inc()
		s.log.Warn("the flow stream ended; opening it again", "after", backoff, "error", err)
		if read > 0 {
			backoff = minBackoff
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// followOnce reads one stream until it fails: the time of the last flow
// read, how many were read, and why it ended.
func (s *Server) followOnce(ctx context.Context, since time.Time) (last time.Time, read int, err error) {
	stream, err := s.cfg.Client.GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true, Since: timestamppb.New(since)})
	if err != nil {
		return last, 0, fmt.Errorf("following flows: %w", err)
	}
	s.setStream(true, nil)
	for {
		r, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("following flows: the server ended the stream")
			}
			return last, read, fmt.Errorf("following flows: %w", err)
		}
		if f := r.GetFlow(); f != nil {
			read++
			s.metrics.flows.Inc()
			if t := f.GetTime().AsTime(); t.After(last) {
				last = t
			}
		}
		s.m.AddResponse(r)
	}
}
