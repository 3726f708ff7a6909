package relaytest

import (
	"context"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// WaitFollowers waits until o has n followers or ctx ends.
func (o *Observer) WaitFollowers(ctx context.Context, n int) error {
	for {
		got, changed := o.Followers()
		if got == n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Produce adds n flows of o's node, 1µs apart from start, in batches.
func (o *Observer) Produce(n int, start time.Time) {
	const batch = 256
	flows := make([]*flowpb.Flow, 0, batch)
	for i := range n {
		flows = append(flows, Flow(o.Node, start.Add(time.Duration(i)*time.Microsecond), "bench", "client"))
		if len(flows) == batch || i == n-1 {
			o.Add(flows...)
			flows = flows[:0]
		}
	}
}
