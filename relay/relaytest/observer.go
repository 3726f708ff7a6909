// Package relaytest is test support for the relay and for the agents'
// Observer servers: a small Observer server that serves flows of known times
// (Observer), and the rate at which a following client receives flows
// (Receive), from which the relay's throughput ratio is computed.
package relaytest

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Observer is an Observer server of one node: the flows it was given
// (Add), in the order given, answered with Hubble's number, first, since,
// until and follow semantics (filters are not applied: the relay passes
// them on, Requests shows them). A follower receives every flow added
// after it started, without loss (Add waits for slow followers).
type Observer struct {
	observerpb.UnimplementedObserverServer

	// Node is the node name of its responses (cluster/node).
	Node string

	mu        sync.Mutex
	flows     []*flowpb.Flow
	followers map[chan *flowpb.Flow]struct{}
	requests  []*observerpb.GetFlowsRequest
	changed   chan struct{} // closed and replaced when followers change
}

// NewObserver returns an Observer of node with no flows.
func NewObserver(node string) *Observer {
	return &Observer{Node: node, followers: map[chan *flowpb.Flow]struct{}{}, changed: make(chan struct{})}
}

// Register registers the Observer service on g.
func (o *Observer) Register(g *grpc.Server) { observerpb.RegisterObserverServer(g, o) }

// Flow is a flow of node at t from namespace/pod.
func Flow(node string, t time.Time, namespace, pod string) *flowpb.Flow {
	return &flowpb.Flow{
		Time: timestamppb.New(t), NodeName: node, Verdict: flowpb.Verdict_FORWARDED,
		Source:      &flowpb.Endpoint{Namespace: namespace, PodName: pod},
		Destination: &flowpb.Endpoint{Namespace: namespace, PodName: "server"},
		Type:        flowpb.FlowType_L3_L4,
	}
}

// Add appends flows to the history and sends them to every follower,
// waiting for each to take them.
func (o *Observer) Add(flows ...*flowpb.Flow) {
	o.mu.Lock()
	o.flows = append(o.flows, flows...)
	fs := make([]chan *flowpb.Flow, 0, len(o.followers))
	for ch := range o.followers {
		fs = append(fs, ch)
	}
	o.mu.Unlock()
	for _, f := range flows {
		for _, ch := range fs {
			ch <- f
		}
	}
}

// Followers is the number of GetFlows calls following now; Changed is
// closed when it changes.
func (o *Observer) Followers() (int, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.followers), o.changed
}

// Requests returns the GetFlows requests received.
func (o *Observer) Requests() []*observerpb.GetFlowsRequest {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.requests)
}

// GetFlows answers the history req selects, then follows when asked. As
// Hubble's, it refuses first with follow, and a field mask path that is
// not a Flow field it knows (time, source, destination, verdict,
// node_name).
func (o *Observer) GetFlows(req *observerpb.GetFlowsRequest, stream grpc.ServerStreamingServer[observerpb.GetFlowsResponse]) error {
	if req.GetFirst() && req.GetFollow() {
		return status.Error(codes.InvalidArgument, "first cannot be specified with follow")
	}
	for _, p := range req.GetFieldMask().GetPaths() {
		switch p {
		case "time", "source", "destination", "verdict", "node_name":
		default:
			return status.Errorf(codes.InvalidArgument, "field_mask: unknown path %q", p)
		}
	}
	o.mu.Lock()
	o.requests = append(o.requests, proto.Clone(req).(*observerpb.GetFlowsRequest))
	history := selectFlows(o.flows, req)
	var ch chan *flowpb.Flow
	if req.GetFollow() {
		ch = make(chan *flowpb.Flow, 1024)
		o.followers[ch] = struct{}{}
		close(o.changed)
		o.changed = make(chan struct{})
	}
	o.mu.Unlock()
	if ch != nil {
		defer o.unfollow(ch)
	}
	for _, f := range history {
		if err := o.send(stream, f); err != nil {
			return err
		}
	}
	if ch == nil {
		return nil
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case f := <-ch:
			if !inTime(f, req) {
				continue
			}
			if err := o.send(stream, f); err != nil {
				return err
			}
		}
	}
}

func (o *Observer) unfollow(ch chan *flowpb.Flow) {
	o.mu.Lock()
	delete(o.followers, ch)
	close(o.changed)
	o.changed = make(chan struct{})
	o.mu.Unlock()
	for { // let a waiting Add go on
		select {
		case <-ch:
		default:
			return
		}
	}
}

func (o *Observer) send(stream grpc.ServerStreamingServer[observerpb.GetFlowsResponse], f *flowpb.Flow) error {
	return stream.Send(&observerpb.GetFlowsResponse{
		NodeName: o.Node, Time: f.Time, ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: f},
	})
}

// selectFlows applies since, until, number and first to the history.
func selectFlows(all []*flowpb.Flow, req *observerpb.GetFlowsRequest) []*flowpb.Flow {
	var out []*flowpb.Flow
	for _, f := range all {
		if inTime(f, req) {
			out = append(out, f)
		}
	}
	n := int(req.GetNumber())
	switch {
	case n == 0 && req.GetFollow() && req.GetSince() == nil:
		return nil // Hubble: a follower with no number nor since gets no history
	case n == 0 || n >= len(out):
		return out
	case req.GetFirst():
		return out[:n]
	default:
		return out[len(out)-n:]
	}
}

func inTime(f *flowpb.Flow, req *observerpb.GetFlowsRequest) bool {
	t := f.GetTime().AsTime()
	if s := req.GetSince(); s != nil && t.Before(s.AsTime()) {
		return false
	}
	if u := req.GetUntil(); u != nil && t.After(u.AsTime()) {
		return false
	}
	return true
}

// ServerStatus reports the history's size.
func (o *Observer) ServerStatus(context.Context, *observerpb.ServerStatusRequest) (*observerpb.ServerStatusResponse, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := uint64(len(o.flows))
	return &observerpb.ServerStatusResponse{
		NumFlows: n, MaxFlows: 4096, SeenFlows: n, UptimeNs: 1e9, Version: "relaytest",
		NumConnectedNodes: wrapperspb.UInt32(1), NumUnavailableNodes: wrapperspb.UInt32(0),
	}, nil
}

// GetNamespaces lists the source namespaces of the history.
func (o *Observer) GetNamespaces(context.Context, *observerpb.GetNamespacesRequest) (*observerpb.GetNamespacesResponse, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	seen := map[string]bool{}
	var out []*observerpb.Namespace
	cluster, _, _ := strings.Cut(o.Node, "/")
	for _, f := range o.flows {
		if ns := f.GetSource().GetNamespace(); ns != "" && !seen[ns] {
			seen[ns] = true
			out = append(out, &observerpb.Namespace{Cluster: cluster, Namespace: ns})
		}
	}
	return &observerpb.GetNamespacesResponse{Namespaces: out}, nil
}
