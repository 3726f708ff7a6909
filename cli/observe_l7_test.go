package cli

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/clustermesh/clustermesh/observe"
)

// l7Flow is an L7 flow as the agent's proxy reports it: west's frontend
// (10.2.1.5) asking east's checkout (10.1.1.11), a response as a reply.
func l7Flow(i int, rec *flowpb.Layer7, v flowpb.Verdict, names ...string) *flowpb.Flow {
	f := &flowpb.Flow{
		Time:    timestamppb.New(obsStart.Add(time.Duration(i) * time.Second)),
		Verdict: v,
		IP:      &flowpb.IP{Source: "10.2.1.5", Destination: "10.1.1.11", IpVersion: flowpb.IPVersion_IPv4},
		L4:      &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 41000 + uint32(i), DestinationPort: 80}}},
		Source:  &flowpb.Endpoint{Identity: 132000}, Destination: &flowpb.Endpoint{Identity: 70001},
		TrafficDirection: flowpb.TrafficDirection_INGRESS, L7: rec, DestinationNames: names,
	}
	if rec.GetType() == flowpb.L7FlowType_RESPONSE {
		f.Source, f.Destination = f.Destination, f.Source
		f.IP.Source, f.IP.Destination = f.IP.Destination, f.IP.Source
		f.IsReply = wrapperspb.Bool(true)
	}
	return f
}

func httpRec(typ flowpb.L7FlowType, method, path string, code uint32, latency time.Duration) *flowpb.Layer7 {
	return &flowpb.Layer7{Type: typ, LatencyNs: uint64(latency), Record: &flowpb.Layer7_Http{Http: &flowpb.HTTP{
		Method: method, Url: "http://checkout" + path, Protocol: "HTTP/1.1", Code: code}}}
}

// TestObserveL7 runs `clustermesh observe` with Hubble's L7 flags against
// a hub holding the proxy's L7 flows.
func TestObserveL7(t *testing.T) {
	hub := observe.NewHub(observe.Config{NodeName: "east/node-1"})
	flows := []*flowpb.Flow{
		l7Flow(0, httpRec(flowpb.L7FlowType_REQUEST, "GET", "/v1/cart", 0, 0), flowpb.Verdict_FORWARDED),
		l7Flow(1, httpRec(flowpb.L7FlowType_RESPONSE, "GET", "/v1/cart", 200, 4913*time.Microsecond), flowpb.Verdict_FORWARDED),
		l7Flow(2, httpRec(flowpb.L7FlowType_REQUEST, "POST", "/v1/cart", 0, 0), flowpb.Verdict_DROPPED),
		l7Flow(3, httpRec(flowpb.L7FlowType_REQUEST, "GET", "/v1/orders/7", 0, 0), flowpb.Verdict_FORWARDED),
		l7Flow(4, httpRec(flowpb.L7FlowType_RESPONSE, "GET", "/v1/orders/7", 503, time.Millisecond), flowpb.Verdict_FORWARDED),
		l7Flow(5, &flowpb.Layer7{Type: flowpb.L7FlowType_REQUEST, Record: &flowpb.Layer7_Dns{Dns: &flowpb.DNS{
			Query: "api.shop.example.", Qtypes: []string{"A"}, ObservationSource: "proxy"}}}, flowpb.Verdict_FORWARDED, "api.shop.example"),
	}
	for _, f := range flows {
		hub.PublishL7(f)
	}
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	observe.NewServer(hub, "").Register(g)
	var wg sync.WaitGroup
	wg.Go(func() { g.Serve(l) })
	t.Cleanup(func() { g.Stop(); wg.Wait() })

	for _, tc := range []struct {
		args string
		want []int
	}{
		{"--type l7", []int{0, 1, 2, 3, 4, 5}},
		{"--protocol http", []int{0, 1, 2, 3, 4}},
		{"--protocol dns", []int{5}},
		{"--http-status 5+", []int{4}},
		{"--http-status 200", []int{1}},
		{"--http-method post", []int{2}},
		{"--http-path /v1/orders/\\d+", []int{3, 4}},
		{"--http-url http://checkout/v1/cart --verdict FORWARDED", []int{0, 1}},
		{"--to-fqdn *.shop.example", []int{5}},
		{"--type l7 --not --protocol dns --verdict DROPPED", []int{2}},
	} {
		out, err := run(context.Background(), append([]string{"observe", "--server", "unix://" + sock, "--all"}, strings.Fields(tc.args)...)...)
		if err != nil {
			t.Errorf("observe %s: %v\n%s", tc.args, err, out)
			continue
		}
		var want strings.Builder
		for _, i := range tc.want {
			want.WriteString(observe.Compact(flows[i]) + "\n")
		}
		if out != want.String() {
			t.Errorf("observe %s:\n got %s\nwant %s", tc.args, out, want.String())
		}
	}
	out, err := run(context.Background(), "observe", "--server", "unix://"+sock, "--all", "--http-status", "200")
	if err != nil || !strings.Contains(out, "http-response FORWARDED (HTTP/1.1 200 took 4.91ms (GET http://checkout/v1/cart))") {
		t.Errorf("compact HTTP response: %v\n%s", err, out)
	}
}
