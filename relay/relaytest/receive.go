package relaytest

import (
	"context"
	"fmt"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
)

// Rate is what a following client received.
type Rate struct {
	Flows   int           // flows received (node status events not counted)
	Elapsed time.Duration // from the first flow to the last
}

// PerSecond is the flows per second.
func (r Rate) PerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Flows-1) / r.Elapsed.Seconds()
}

// Receive follows the flows of conn (an agent's Observer server or the
// relay) and counts n flows. started is called once the client's stream is
// open: the caller then waits for the server side to follow (e.g.
// Observer.Followers) and starts producing. Receive returns when n flows
// arrived or ctx ends.
func Receive(ctx context.Context, conn grpc.ClientConnInterface, n int, started func()) (Rate, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := observerpb.NewObserverClient(conn).GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true})
	if err != nil {
		return Rate{}, fmt.Errorf("following flows: %w", err)
	}
	if started != nil {
		started()
	}
	var r Rate
	var first time.Time
	for r.Flows < n {
		resp, err := st.Recv()
		if err != nil {
			return r, fmt.Errorf("after %d flows: %w", r.Flows, err)
		}
		if resp.GetFlow() == nil {
			continue
		}
		if r.Flows == 0 {
			first = time.Now()
		}
		r.Flows++
	}
	r.Elapsed = time.Since(first)
	return r, nil
}
