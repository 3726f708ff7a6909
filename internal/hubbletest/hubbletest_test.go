package hubbletest

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestVersionAndHelp(t *testing.T) {
	hubble := Require(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := hubble.Run(ctx, "version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.Stdout, "hubble "+Version+" ") {
		t.Errorf("hubble version printed %q, want hubble %s ...", out.Stdout, Version)
	}
	out, err = hubble.Run(ctx, "observe", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{"--verdict", "--drop-reason-desc", "--from-cluster", "--since", "--last"} {
		if !strings.Contains(out.Stdout, flag) {
			t.Errorf("hubble observe --help does not mention %s", flag)
		}
	}
	if _, err := hubble.Run(ctx, "observe", "--no-such-flag"); err == nil || !strings.Contains(err.Error(), "unknown flag: --no-such-flag") {
		t.Errorf("an unknown flag: %v, want an error that quotes hubble's stderr", err)
	}
}

// observer is a minimal Observer: GetFlows sends its flows (the last
// Number of them) and ends; it records each request.
type observer struct {
	observerpb.UnimplementedObserverServer
	flows []*flowpb.Flow

	mu       sync.Mutex
	requests []*observerpb.GetFlowsRequest
}

func (o *observer) GetFlows(req *observerpb.GetFlowsRequest, stream grpc.ServerStreamingServer[observerpb.GetFlowsResponse]) error {
	o.mu.Lock()
	o.requests = append(o.requests, proto.CloneOf(req))
	o.mu.Unlock()
	flows := o.flows
	if n := int(req.GetNumber()); n > 0 && n < len(flows) {
		flows = flows[len(flows)-n:]
	}
	for _, f := range flows {
		resp := &observerpb.GetFlowsResponse{NodeName: f.GetNodeName(), Time: f.GetTime(),
			ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: f}}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	return nil
}

// serve serves o on a unix socket until the test ends.
func serve(t *testing.T, o *observer) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	observerpb.RegisterObserverServer(srv, o)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("serving the observer: %v", err)
		}
	})
	return sock
}

func testFlows() []*flowpb.Flow {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var flows []*flowpb.Flow
	for i := range 7 {
		f := &flowpb.Flow{
			Time:     timestamppb.New(t0.Add(time.Duration(i) * time.Second)),
			NodeName: "east/node-1",
			Verdict:  flowpb.Verdict_FORWARDED,
			IP:       &flowpb.IP{Source: "10.1.1.10", Destination: "10.2.1.100", IpVersion: flowpb.IPVersion_IPv4},
			L4: &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: uint32(40000 + i),
				DestinationPort: 8443, Flags: &flowpb.TCPFlags{SYN: true}}}},
			Source:           &flowpb.Endpoint{ClusterName: "east", Namespace: "shop", PodName: "frontend-7d9f", Identity: 65537},
			Destination:      &flowpb.Endpoint{ClusterName: "west", Namespace: "shop", PodName: "payments-0", Identity: 131073},
			Type:             flowpb.FlowType_L3_L4,
			EventType:        &flowpb.CiliumEventType{Type: 4},
			TrafficDirection: flowpb.TrafficDirection_EGRESS,
			IsReply:          wrapperspb.Bool(false),
		}
		if i%2 == 1 {
			f.Verdict, f.DropReasonDesc = flowpb.Verdict_DROPPED, flowpb.DropReason_POLICY_DENIED
			f.EventType = &flowpb.CiliumEventType{Type: 1, SubType: 133}
		}
		flows = append(flows, f)
	}
	return flows
}

// The real hubble CLI against a gRPC Observer over a unix socket: the
// request it sends (--last 5, a filter) and the JSON it prints.
func TestObserveJSON(t *testing.T) {
	hubble := Require(t)
	o := &observer{flows: testFlows()}
	sock := serve(t, o)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := hubble.Run(ctx, "observe", "--server", "unix://"+sock, "-o", "json", "--last", "5",
		"--verdict", "DROPPED", "--verdict", "FORWARDED")
	if err != nil {
		t.Fatal(err)
	}
	type line struct {
		Flow struct {
			Time    time.Time `json:"time"`
			Verdict string    `json:"verdict"`
			Drop    string    `json:"drop_reason_desc"`
			Node    string    `json:"node_name"`
			Source  struct {
				Cluster   string `json:"cluster_name"`
				Namespace string `json:"namespace"`
				Pod       string `json:"pod_name"`
			} `json:"source"`
			L4 struct {
				TCP struct {
					Port int `json:"destination_port"`
				} `json:"TCP"`
			} `json:"l4"`
		} `json:"flow"`
		NodeName string `json:"node_name"`
	}
	var got []line
	sc := bufio.NewScanner(strings.NewReader(out.Stdout))
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("hubble printed a line that is not JSON: %q: %v", sc.Text(), err)
		}
		got = append(got, l)
	}
	if len(got) != 5 {
		t.Fatalf("hubble printed %d flows, want the last 5:\n%s", len(got), out.Stdout)
	}
	for i, l := range got {
		f := l.Flow
		wantVerdict, wantDrop := "FORWARDED", ""
		if (i+2)%2 == 1 {
			wantVerdict, wantDrop = "DROPPED", "POLICY_DENIED"
		}
		if f.Verdict != wantVerdict || f.Drop != wantDrop || f.Source.Cluster != "east" || f.Source.Namespace != "shop" ||
			f.Source.Pod != "frontend-7d9f" || f.L4.TCP.Port != 8443 || f.Node != "east/node-1" || l.NodeName != "east/node-1" ||
			!f.Time.Equal(o.flows[i+2].GetTime().AsTime()) {
			t.Errorf("flow %d: %+v", i, l)
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.requests) != 1 {
		t.Fatalf("%d requests, want 1", len(o.requests))
	}
	req := o.requests[0]
	want := []flowpb.Verdict{flowpb.Verdict_DROPPED, flowpb.Verdict_FORWARDED}
	if req.GetNumber() != 5 || req.GetFollow() || len(req.GetWhitelist()) != 1 ||
		!slices.Equal(req.GetWhitelist()[0].GetVerdict(), want) {
		t.Errorf("hubble sent %v, want the last 5 flows with one filter on verdicts %v (a flag given twice ORs)", req, want)
	}
}
