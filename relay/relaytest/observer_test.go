package relaytest

import (
	"context"
	"net"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The Observer answers with Hubble's semantics, and Receive counts what a
// follower gets.
func TestObserverAndReceive(t *testing.T) {
	o := NewObserver("east/n1")
	base := time.Unix(1000, 0)
	for i := range 5 {
		o.Add(Flow(o.Node, base.Add(time.Duration(i)*time.Second), "shop", "a"))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	o.Register(g)
	done := make(chan struct{})
	go func() { defer close(done); g.Serve(ln) }()
	defer func() { g.Stop(); <-done }()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	count := func(req *observerpb.GetFlowsRequest) (n int, first int64) {
		st, err := observerpb.NewObserverClient(conn).GetFlows(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for {
			r, err := st.Recv()
			if err != nil {
				return n, first
			}
			if n == 0 {
				first = r.GetFlow().GetTime().GetSeconds()
			}
			n++
		}
	}
	for _, tc := range []struct {
		req   *observerpb.GetFlowsRequest
		n     int
		first int64
	}{
		{&observerpb.GetFlowsRequest{}, 5, 1000},
		{&observerpb.GetFlowsRequest{Number: 2}, 2, 1003},
		{&observerpb.GetFlowsRequest{Number: 2, First: true}, 2, 1000},
		{&observerpb.GetFlowsRequest{Since: timestamppb.New(base.Add(3 * time.Second))}, 2, 1003},
	} {
		if n, first := count(tc.req); n != tc.n || first != tc.first {
			t.Errorf("%v: %d flows from %d, want %d from %d", tc.req, n, first, tc.n, tc.first)
		}
	}
	produced := make(chan struct{})
	started := false
	rate, err := Receive(ctx, conn, 1000, func() {
		started = true
		go func() {
			defer close(produced)
			if o.WaitFollowers(ctx, 1) == nil {
				o.Produce(1000, base.Add(time.Hour))
			}
		}()
	})
	if started {
		<-produced
	}
	if err != nil || rate.Flows != 1000 || rate.PerSecond() <= 0 {
		t.Fatalf("Receive: %+v, %v", rate, err)
	}
}
