package observe

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// serve serves h's Observer on a unix socket until the test ends and
// returns a client of it.
func serve(t *testing.T, h *Hub) observerpb.ObserverClient {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	NewServer(h, "").Register(g)
	done := make(chan struct{})
	go func() { defer close(done); g.Serve(l) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); g.Stop(); <-done })
	return observerpb.NewObserverClient(conn)
}

// getFlows runs a GetFlows request to its end (or n events when
// following) and returns the events.
func getFlows(t *testing.T, c observerpb.ObserverClient, req *observerpb.GetFlowsRequest, n int) ([]*observerpb.GetFlowsResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := c.GetFlows(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []*observerpb.GetFlowsResponse
	for n <= 0 || len(out) < n {
		r, err := stream.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

func TestServerGetFlows(t *testing.T) {
	h, src := runHub(t, Config{NodeName: "east/node-1"})
	c := serve(t, h)
	send(t, h, src, 1, 6)
	dropped := []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}
	for _, tc := range []struct {
		name string
		req  *observerpb.GetFlowsRequest
		want string
	}{
		{"last 2", &observerpb.GetFlowsRequest{Number: 2}, "5 6"},
		{"all dropped", &observerpb.GetFlowsRequest{Whitelist: dropped}, "2 4 6"},
		{"not dropped", &observerpb.GetFlowsRequest{Blacklist: dropped}, "1 3 5"},
		{"first 2 dropped", &observerpb.GetFlowsRequest{Number: 2, First: true, Whitelist: dropped}, "2 4"},
		{"since 4", &observerpb.GetFlowsRequest{Since: timestamppb.New(flowTime(4))}, "4 5 6"},
		{"until 2", &observerpb.GetFlowsRequest{Until: timestamppb.New(flowTime(2))}, "1 2"},
		{"two source ports OR", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{SourcePort: []string{"1", "5"}}}}, "1 5"},
		{"masked to l4 and node", &observerpb.GetFlowsRequest{Number: 1, FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"l4", "node_name"}}}, "6"},
	} {
		evs, err := getFlows(t, c, tc.req, 0)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := ports(evs); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
		for _, ev := range evs {
			if tc.req.FieldMask != nil && (ev.GetFlow().GetSource() != nil || ev.GetFlow().GetL4() == nil) {
				t.Errorf("%s: the mask kept the source or lost l4: %v", tc.name, ev.GetFlow())
			}
			if ev.GetNodeName() != "east/node-1" || ev.GetTime() == nil || ev.GetFlow().GetNodeName() != "east/node-1" {
				t.Errorf("%s: event without node or time: %v", tc.name, ev)
			}
		}
	}
	for _, req := range []*observerpb.GetFlowsRequest{
		{First: true, Follow: true},
		{Whitelist: []*flowpb.FlowFilter{{SourceIp: []string{"10.0.0.0/33"}}}},
		{FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"no_such_field"}}},
	} {
		if _, err := getFlows(t, c, req, 0); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: %v, want InvalidArgument", req, err)
		}
	}
}

func TestServerFollow(t *testing.T) {
	h, src := runHub(t, Config{NodeName: "east/node-1"})
	c := serve(t, h)
	send(t, h, src, 1, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Number: 1, Follow: true,
		Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || sourcePort(first.GetFlow()) != 2 {
		t.Fatalf("first event %v, %v; want flow 2", first, err)
	}
	go func() {
		for i := 3; i <= 6; i++ {
			src.ch <- numbered(i)
		}
	}()
	var got []*observerpb.GetFlowsResponse
	for len(got) < 2 {
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	if p := ports(got); p != "4 6" {
		t.Errorf("followed %s, want 4 6", p)
	}
	cancel()
	testenv.WaitFor(t, 10*time.Second, "the server to drop the cancelled follower", func() bool { return h.Stats().Subscribers == 0 })
}

func TestServerStatusNodesNamespaces(t *testing.T) {
	h, src := runHub(t, Config{NodeName: "east/node-1", Capacity: 4})
	c := serve(t, h)
	send(t, h, src, 1, 6)
	ctx := context.Background()
	st, err := c.ServerStatus(ctx, &observerpb.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.NumFlows != 4 || st.MaxFlows != 4 || st.SeenFlows != 6 || st.UptimeNs == 0 || st.Version == "" {
		t.Errorf("ServerStatus = %v", st)
	}
	nodes, err := c.GetNodes(ctx, &observerpb.GetNodesRequest{})
	if err != nil || len(nodes.Nodes) != 1 || nodes.Nodes[0].Name != "east/node-1" {
		t.Errorf("GetNodes = %v, %v", nodes, err)
	}
	ns, err := c.GetNamespaces(ctx, &observerpb.GetNamespacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, n := range ns.Namespaces {
		seen[n.Cluster+"/"+n.Namespace] = true
	}
	if len(seen) != 2 || !seen["west/web"] || !seen["east/shop"] {
		t.Errorf("GetNamespaces = %v", ns)
	}
}
