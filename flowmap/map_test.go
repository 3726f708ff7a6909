package flowmap

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

var t0 = time.Date(2026, 12, 5, 14, 0, 0, 0, time.UTC)

// pod is an end in a cluster's namespace, of a workload when w is set.
func pod(cluster, ns, name, w string) *flowpb.Endpoint {
	ep := &flowpb.Endpoint{ClusterName: cluster, Namespace: ns, PodName: name, Identity: 70000}
	if w != "" {
		ep.Workloads = []*flowpb.Workload{{Kind: "Deployment", Name: w}}
	}
	return ep
}

func reserved(name string) *flowpb.Endpoint {
	return &flowpb.Endpoint{Labels: []string{"reserved:" + name}}
}

// tcp is a flow from src:41000 to dst:port at t.
func tcp(t time.Time, src, dst *flowpb.Endpoint, port uint32, v flowpb.Verdict) *flowpb.Flow {
	return &flowpb.Flow{
		Time: timestamppb.New(t), Source: src, Destination: dst, Verdict: v,
		IP: &flowpb.IP{Source: "10.0.0.1", Destination: "10.0.1.1"},
		L4: &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 41000, DestinationPort: port}}},
	}
}

func edgeByID(t *testing.T, s Snapshot, id string) Edge {
	t.Helper()
	for _, e := range s.Edges {
		if e.ID == id {
			return e
		}
	}
	t.Fatalf("no edge %q in %v", id, edgeIDs(s))
	return Edge{}
}

func edgeIDs(s Snapshot) []string {
	var ids []string
	for _, e := range s.Edges {
		ids = append(ids, e.ID)
	}
	return ids
}

func TestEdgesByWorkloadPortAndVerdict(t *testing.T) {
	m := New(Config{Window: time.Minute})
	fe, co := pod("west", "shop", "frontend-1", "frontend"), pod("east", "shop", "checkout-2", "checkout")
	fe2 := pod("west", "shop", "frontend-2", "frontend")
	for i := range 6 {
		m.Add(tcp(t0.Add(time.Duration(i)*time.Second), fe, co, 8080, flowpb.Verdict_FORWARDED))
	}
	m.Add(tcp(t0, fe2, co, 8080, flowpb.Verdict_DROPPED))
	m.Add(tcp(t0, fe2, co, 8080, flowpb.Verdict_DROPPED))
	reply := tcp(t0, co, fe, 41000, flowpb.Verdict_FORWARDED)
	reply.L4.GetTCP().SourcePort = 8080
	reply.IsReply = wrapperspb.Bool(true)
	m.Add(reply)
	m.Add(tcp(t0, fe, co, 9090, flowpb.Verdict_FORWARDED))

	s := m.Snapshot(t0.Add(10*time.Second), Query{})
	if len(s.Edges) != 2 || len(s.Nodes) != 2 {
		t.Fatalf("edges %v, nodes %v: want 2 edges (8080, 9090) between 2 workloads", edgeIDs(s), s.Nodes)
	}
	e := edgeByID(t, s, "west/shop/frontend -> east/shop/checkout 8080/TCP")
	if e.Flows != 9 || e.Verdicts["FORWARDED"] != 7 || e.Verdicts["DROPPED"] != 2 {
		t.Errorf("edge counts %d %v: want 9 flows, 7 forwarded (the reply's included), 2 dropped", e.Flows, e.Verdicts)
	}
	if want := 2.0 / 9; e.DropShare != want || e.Rate != 9.0/60 {
		t.Errorf("drop share %v rate %v: want %v and %v", e.DropShare, e.Rate, want, 9.0/60)
	}
	if s.Nodes[0].Kind != KindWorkload || s.Nodes[0].Name != "checkout" || s.Nodes[0].Cluster != "east" {
		t.Errorf("node %+v: want the workload checkout of east", s.Nodes[0])
	}
	if fmt.Sprint(s.Clusters, s.Namespaces) != "[east west] [shop]" {
		t.Errorf("clusters and namespaces %v %v", s.Clusters, s.Namespaces)
	}
}

func TestPeersOutsideThePods(t *testing.T) {
	m := New(Config{})
	co := pod("east", "shop", "checkout-2", "")
	m.Add(tcp(t0, reserved("world"), co, 443, flowpb.Verdict_FORWARDED))
	m.Add(tcp(t0, reserved("world-ipv4"), co, 443, flowpb.Verdict_FORWARDED))
	rn := reserved("remote-node")
	rn.ClusterName = "west"
	m.Add(tcp(t0, rn, co, 4240, flowpb.Verdict_FORWARDED))
	m.Add(tcp(t0, &flowpb.Endpoint{}, co, 80, flowpb.Verdict_FORWARDED)) // by address
	unnamed := tcp(t0, &flowpb.Endpoint{}, co, 80, flowpb.Verdict_FORWARDED)
	unnamed.IP = nil
	if m.Add(unnamed) {
		t.Error("a flow with an end without pod, identity or address was added")
	}
	s := m.Snapshot(t0, Query{})
	want := []string{
		"10.0.0.1 -> east/shop/checkout-2 80/TCP",
		"west/remote-node -> east/shop/checkout-2 4240/TCP",
		"world -> east/shop/checkout-2 443/TCP",
	}
	if fmt.Sprint(edgeIDs(s)) != fmt.Sprint(want) {
		t.Errorf("edges %q, want %q", edgeIDs(s), want)
	}
	if st := m.Stats(); st.Flows != 4 || st.Skipped != 1 {
		t.Errorf("stats %+v: want 4 flows, 1 skipped", st)
	}
}

func TestWindowSlidesAndForgets(t *testing.T) {
	m := New(Config{Window: time.Minute, Buckets: 6})
	fe, co := pod("west", "shop", "f-1", "frontend"), pod("east", "shop", "c-1", "checkout")
	m.Add(tcp(t0, fe, co, 8080, flowpb.Verdict_FORWARDED))
	m.Add(tcp(t0.Add(30*time.Second), fe, co, 8080, flowpb.Verdict_DROPPED))
	if e := m.Snapshot(t0.Add(35*time.Second), Query{}).Edges[0]; e.Flows != 2 {
		t.Errorf("at 35s: %d flows, want both", e.Flows)
	}
	if e := m.Snapshot(t0.Add(35*time.Second), Query{Window: 10 * time.Second}).Edges[0]; e.Flows != 1 || e.DropShare != 1 {
		t.Errorf("last 10s at 35s: %d flows share %v, want the drop only", e.Flows, e.DropShare)
	}
	if e := m.Snapshot(t0.Add(80*time.Second), Query{}).Edges[0]; e.Flows != 1 {
		t.Errorf("at 80s: %d flows, want the second only", e.Flows)
	}
	// A flow of another edge three minutes later prunes the first edge.
	m.Add(tcp(t0.Add(3*time.Minute), co, fe, 53, flowpb.Verdict_FORWARDED))
	s := m.Snapshot(t0.Add(3*time.Minute), Query{})
	if len(s.Edges) != 1 || s.Edges[0].Source != "east/shop/checkout" {
		t.Errorf("after 3 minutes: %v, want the new edge only", edgeIDs(s))
	}
	if _, err := m.Flows("west/shop/frontend -> east/shop/checkout 8080/TCP", 5); !errors.Is(err, ErrNotFound) {
		t.Errorf("flows of a pruned edge: %v, want ErrNotFound", err)
	}
}

func TestQueryFilters(t *testing.T) {
	m := New(Config{})
	m.Add(tcp(t0, pod("west", "shop", "f", "frontend"), pod("east", "shop", "c", "checkout"), 8080, flowpb.Verdict_DROPPED))
	m.Add(tcp(t0, pod("east", "shop", "c", "checkout"), pod("east", "db", "p", "postgres"), 5432, flowpb.Verdict_FORWARDED))
	m.Add(tcp(t0, pod("north", "ops", "m", "monitor"), pod("north", "ops", "p", "prom"), 9090, flowpb.Verdict_FORWARDED))
	for _, c := range []struct {
		q    Query
		want int
	}{
		{Query{}, 3},
		{Query{Cluster: "east"}, 2},
		{Query{Cluster: "west"}, 1},
		{Query{Namespace: "db"}, 1},
		{Query{Cluster: "north", Namespace: "shop"}, 0},
		{Query{Verdict: flowpb.Verdict_DROPPED}, 1},
		{Query{Verdict: flowpb.Verdict_FORWARDED, Cluster: "east"}, 1},
	} {
		if s := m.Snapshot(t0, c.q); len(s.Edges) != c.want {
			t.Errorf("%+v: edges %q, want %d", c.q, edgeIDs(s), c.want)
		}
	}
}

func TestGlobalServicesAndTheirClusters(t *testing.T) {
	m := New(Config{Window: time.Minute})
	fe := pod("west", "shop", "f", "frontend")
	for i, c := range []string{"east", "west", "east"} {
		f := tcp(t0.Add(time.Duration(i)*20*time.Second), fe, pod(c, "shop", "c", "checkout"), 8080, flowpb.Verdict_FORWARDED)
		f.DestinationService = &flowpb.Service{Namespace: "shop", Name: "checkout"}
		m.Add(f)
	}
	s := m.Snapshot(t0.Add(40*time.Second), Query{})
	if len(s.Services) != 1 || fmt.Sprint(s.Services[0].Clusters) != "[east west]" {
		t.Fatalf("services %+v: want shop/checkout served by east and west", s.Services)
	}
	if e := s.Edges[0]; e.Service != "shop/checkout" {
		t.Errorf("edge %q service %q", e.ID, e.Service)
	}
	s = m.Snapshot(t0.Add(40*time.Second), Query{Window: 15 * time.Second})
	if fmt.Sprint(s.Services[0].Clusters) != "[east]" {
		t.Errorf("last 15s: %+v, want east only", s.Services)
	}
}

func TestFlowsOfEdgesAndNodes(t *testing.T) {
	m := New(Config{FlowsPerEdge: 3})
	fe, co, db := pod("west", "shop", "f", "frontend"), pod("east", "shop", "c", "checkout"), pod("east", "db", "p", "pg")
	for i := range 5 {
		m.Add(tcp(t0.Add(time.Duration(i)*time.Second), fe, co, 8080, flowpb.Verdict_FORWARDED))
	}
	m.Add(tcp(t0.Add(10*time.Second), co, db, 5432, flowpb.Verdict_DROPPED))
	fs, err := m.Flows("west/shop/frontend -> east/shop/checkout 8080/TCP", 10)
	if err != nil || len(fs) != 3 || !fs[0].GetTime().AsTime().Equal(t0.Add(4*time.Second)) {
		t.Fatalf("edge flows %d %v: want the last 3, newest first", len(fs), err)
	}
	fs, err = m.Flows("east/shop/checkout", 2)
	if err != nil || len(fs) != 2 || fs[0].GetVerdict() != flowpb.Verdict_DROPPED {
		t.Fatalf("node flows %v %v: want 2, the drop first", fs, err)
	}
}

func TestOverflowAndOtherEvents(t *testing.T) {
	m := New(Config{MaxEdges: 2})
	for p := range uint32(4) {
		m.AddResponse(&observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_Flow{
			Flow: tcp(t0, pod("a", "n", "x", ""), pod("b", "n", "y", ""), 80+p, flowpb.Verdict_FORWARDED)}})
	}
	if m.AddResponse(&observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_LostEvents{LostEvents: &flowpb.LostEvent{}}}) {
		t.Error("a lost event changed the map")
	}
	if st := m.Stats(); st.Flows != 2 || st.Overflow != 2 {
		t.Errorf("stats %+v: want 2 flows in, 2 over the edge limit", st)
	}
}

func TestL7Labels(t *testing.T) {
	m := New(Config{})
	f := tcp(t0, pod("west", "shop", "f", "frontend"), pod("east", "shop", "c", "checkout"), 8080, flowpb.Verdict_FORWARDED)
	f.L7 = &flowpb.Layer7{Record: &flowpb.Layer7_Http{Http: &flowpb.HTTP{Method: "GET", Url: "http://checkout:8080/cart?id=1"}}}
	m.Add(f)
	if e := m.Snapshot(t0, Query{}).Edges[0]; e.Protocol != "HTTP" || e.L7 != "GET /cart" {
		t.Errorf("edge %+v: want HTTP GET /cart", e)
	}
}

func TestWriteJSONAndDOT(t *testing.T) {
	m := New(Config{Window: time.Minute})
	m.Add(tcp(t0, pod("west", "shop", "f", "frontend"), pod("east", "shop", "c", "checkout"), 8080, flowpb.Verdict_DROPPED))
	m.Add(tcp(t0, reserved("world"), pod("east", "shop", "c", "checkout"), 443, flowpb.Verdict_FORWARDED))
	s := m.Snapshot(t0, Query{})
	var b bytes.Buffer
	if err := WriteJSON(&b, s); err != nil {
		t.Fatal(err)
	}
	var back Snapshot
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back.Edges) != 2 || back.Edges[0].Verdicts["DROPPED"] != 1 {
		t.Fatalf("JSON back %+v, %v", back, err)
	}
	b.Reset()
	if err := WriteDOT(&b, s); err != nil {
		t.Fatal(err)
	}
	dot := b.String()
	for _, want := range []string{
		"digraph mesh {", `label="east";`, `label="shop";`, `"east/shop/checkout" [label="checkout"];`, `"world" [label="world"];`,
		`"west/shop/frontend" -> "east/shop/checkout" [label="8080/TCP 0.0167/s", color=red];`,
		`"world" -> "east/shop/checkout" [label="443/TCP 0.0167/s", color=darkgreen];`,
	} {
		if !strings.Contains(dot, want) {
			t.Errorf("DOT lacks %s:\n%s", want, dot)
		}
	}
	if strings.Count(dot, "{") != strings.Count(dot, "}") {
		t.Errorf("DOT braces unbalanced:\n%s", dot)
	}
}

// FuzzAdd adds flows decoded from arbitrary bytes: nothing panics, and a
// snapshot's counts add up.
func FuzzAdd(f *testing.F) {
	seed := tcp(t0, pod("west", "shop", "f", "frontend"), reserved("world"), 80, flowpb.Verdict_DROPPED)
	seed.IsReply = wrapperspb.Bool(true)
	seed.L7 = &flowpb.Layer7{Record: &flowpb.Layer7_Http{Http: &flowpb.HTTP{Method: "GET", Url: "http://x/y"}}}
	b, _ := proto.Marshal(seed)
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var fl flowpb.Flow
		if proto.Unmarshal(data, &fl) != nil {
			return
		}
		m := New(Config{})
		m.Add(&fl)
		var b bytes.Buffer
		s := m.Snapshot(fl.GetTime().AsTime(), Query{})
		if err := WriteDOT(&b, s); err != nil {
			t.Fatal(err)
		}
		for _, e := range s.Edges {
			var sum uint64
			for _, c := range e.Verdicts {
				sum += c
			}
			if sum != e.Flows {
				t.Fatalf("edge %q: verdicts %v do not add up to %d", e.ID, e.Verdicts, e.Flows)
			}
		}
	})
}
