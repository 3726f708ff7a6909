package observe

import (
	"context"
	"runtime/debug"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clustermesh/clustermesh/flowfilter"
	"github.com/clustermesh/clustermesh/flowmask"
)

// Server is Hubble's Observer service on a Hub: GetFlows with Hubble's
// filters and semantics (number, first, follow, since, until),
// ServerStatus, GetNodes (this node), GetNamespaces. Agent and debug
// events are not produced (Unimplemented). Register it on a grpc.Server
// with Register.
type Server struct {
	observerpb.UnimplementedObserverServer
	hub *Hub
	// address is the node's Observer address as peers reach it ("" when
	// only the unix socket serves).
	address string
}

// NewServer returns the Observer service of h; address is where peers
// reach it over TCP ("" when not served there).
func NewServer(h *Hub, address string) *Server { return &Server{hub: h, address: address} }

// Register registers the Observer service on g.
func (s *Server) Register(g *grpc.Server) { observerpb.RegisterObserverServer(g, s) }

// Version is what ServerStatus and GetNodes report: the module's version.
func Version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return "clustermesh " + bi.Main.Version
	}
	return "clustermesh (devel)"
}

// QueryOf returns the hub query of a GetFlows request, its filters compiled;
// the error is an InvalidArgument status that says what is wrong.
func QueryOf(req *observerpb.GetFlowsRequest) (Query, error) {
	if req.GetFirst() && req.GetFollow() {
		return Query{}, status.Error(codes.InvalidArgument, "first cannot be specified with follow")
	}
	mask, _, err := flowmask.Compile(req.GetFieldMask().GetPaths())
	if err != nil {
		return Query{}, status.Errorf(codes.InvalidArgument, "field_mask: %v", err)
	}
	f, err := flowfilter.Compile(req.GetWhitelist(), req.GetBlacklist())
	if err != nil {
		return Query{}, status.Error(codes.InvalidArgument, err.Error())
	}
	q := Query{Match: f.Match, Number: req.GetNumber(), First: req.GetFirst(), Follow: req.GetFollow(), Mask: mask}
	for _, t := range []struct {
		ts  *timestamppb.Timestamp
		dst *time.Time
	}{{req.GetSince(), &q.Since}, {req.GetUntil(), &q.Until}} {
		if t.ts == nil {
			continue
		}
		if err := t.ts.CheckValid(); err != nil {
			return Query{}, status.Errorf(codes.InvalidArgument, "invalid since/until: %v", err)
		}
		*t.dst = t.ts.AsTime()
	}
	return q, nil
}

// GetFlows streams the flows req selects.
func (s *Server) GetFlows(req *observerpb.GetFlowsRequest, stream grpc.ServerStreamingServer[observerpb.GetFlowsResponse]) error {
	q, err := QueryOf(req)
	if err != nil {
		return err
	}
	sub := s.hub.Subscribe(q)
	defer sub.Close()
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case r, ok := <-sub.Events():
			if !ok {
				return nil
			}
			if f := r.GetFlow(); f != nil && !q.Until.IsZero() && f.GetTime().AsTime().After(q.Until) {
				return nil
			}
			if f := r.GetFlow(); f != nil && len(q.Mask) > 0 {
				r = &observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: q.Mask.Apply(f)},
					NodeName: r.GetNodeName(), Time: r.GetTime()}
			}
			if err := stream.Send(r); err != nil {
				return err
			}
		}
	}
}

// ServerStatus reports the ring's fill, the flows seen and their rate over
// the last minute.
func (s *Server) ServerStatus(context.Context, *observerpb.ServerStatusRequest) (*observerpb.ServerStatusResponse, error) {
	st := s.hub.Stats()
	return &observerpb.ServerStatusResponse{
		NumFlows: uint64(st.Kept), MaxFlows: uint64(st.Capacity), SeenFlows: st.Flows,
		UptimeNs: uint64(time.Since(s.hub.start)), Version: Version(), FlowsRate: s.hub.rate(time.Now()),
	}, nil
}

// GetNodes answers this node, connected.
func (s *Server) GetNodes(context.Context, *observerpb.GetNodesRequest) (*observerpb.GetNodesResponse, error) {
	st := s.hub.Stats()
	return &observerpb.GetNodesResponse{Nodes: []*observerpb.Node{{
		Name: s.hub.cfg.NodeName, Version: Version(), Address: s.address, State: relaypb.NodeState_NODE_CONNECTED,
		UptimeNs: uint64(time.Since(s.hub.start)), NumFlows: uint64(st.Kept), MaxFlows: uint64(st.Capacity), SeenFlows: st.Flows,
	}}}, nil
}

// GetNamespaces answers the namespaces seen in flows within the last hour.
func (s *Server) GetNamespaces(context.Context, *observerpb.GetNamespacesRequest) (*observerpb.GetNamespacesResponse, error) {
	return &observerpb.GetNamespacesResponse{Namespaces: s.hub.Namespaces()}, nil
}

// rate is the flows per second seen over the minute before now, from the
// ring (as Hubble computes it).
func (h *Hub) rate(now time.Time) float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	since := now.Add(-time.Minute)
	n := 0
	for i := len(h.ring) - 1; i >= 0; i-- {
		if h.at(i).GetTime().AsTime().Before(since) {
			break
		}
		n++
	}
	return float64(n) / time.Minute.Seconds()
}
