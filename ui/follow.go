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
// from the time of the last flow it read (whose flows of that very time it
// skips: they are in the map).
func (s *Server) follow(ctx context.Context) {
	var pos position
	pos.last = time.Now().Add(-s.m.Window())
	backoff := minBackoff
	for ctx.Err() == nil {
		read, err := s.followOnce(ctx, &pos)
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

// position is where a stream resumes: the time of the last flow read, and
// how many flows of that time were read.
type position struct {
	last   time.Time
	atLast int
}

// followOnce reads one stream from pos until it fails: how many flows it
// read, and why it ended.
func (s *Server) followOnce(ctx context.Context, pos *position) (read int, err error) {
	stream, err := s.cfg.Client.GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true, Since: timestamppb.New(pos.last)})
	if err != nil {
		return 0, fmt.Errorf("following flows: %w", err)
	}
	s.setStream(true, nil)
	skip := pos.atLast
	for {
		r, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the server ended the stream")
			}
			return read, fmt.Errorf("following flows: %w", err)
		}
		f := r.GetFlow()
		if f == nil {
			continue
		}
		t := f.GetTime().AsTime()
		if skip > 0 && t.Equal(pos.last) {
			skip-- // read before the stream broke
			continue
		}
		read++
		s.metrics.flows.Inc()
		switch {
		case t.After(pos.last):
			pos.last, pos.atLast = t, 1
		case t.Equal(pos.last):
			pos.atLast++
		}
		s.m.Add(f)
	}
}
