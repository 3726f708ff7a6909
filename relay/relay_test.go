package relay

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/relay/relaytest"
)

var base = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// at is base + ms milliseconds.
func at(ms int) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }

// threeNodes is east/n1, east/n2 and west/n1, connected to a relay, each
// with ten flows: east/n1 at 0,3,6.., east/n2 at 1,4,7.., west/n1 at 2,5,8..
func threeNodes(t *testing.T, edit func(*Config)) (*testMesh, []*testNode) {
	m := newTestMesh(t)
	nodes := []*testNode{m.addNode("east", "n1", "east"), m.addNode("east", "n2", "east"), m.addNode("west", "n1", "west")}
	for i, n := range nodes {
		for k := range 10 {
			n.obs.Add(relaytest.Flow(n.peer.Name, at(3*k+i), "shop", "pod"))
		}
	}
	m.announce()
	m.startRelay(edit)
	m.waitConnected(3)
	return m, nodes
}

func statusOf(r *observerpb.GetFlowsResponse) (relaypb.NodeState, []string) {
	return r.GetNodeStatus().GetStateChange(), r.GetNodeStatus().GetNodeNames()
}

func TestMergesFlowsInTimeOrder(t *testing.T) {
	m, nodes := threeNodes(t, nil)
	all := m.getFlows(&observerpb.GetFlowsRequest{})
	if len(all.flows) != 30 || !all.sorted() {
		t.Fatalf("all flows: %d, sorted %v: %v", len(all.flows), all.sorted(), all.nodeTimes())
	}
	for i, f := range all.flows {
		if got := respTime(f); got != at(i).UnixNano() {
			t.Fatalf("flow %d at %s, want %s", i, time.Unix(0, got).UTC(), at(i))
		}
	}
	if len(all.status) != 1 {
		t.Fatalf("node status events %v, want one NODE_CONNECTED", all.status)
	}
	if st, names := statusOf(all.status[0]); st != relaypb.NodeState_NODE_CONNECTED || !slices.Equal(names, []string{"east/n1", "east/n2", "west/n1"}) {
		t.Errorf("status %s %v", st, names)
	}

	// number: the last (or first) N of the whole mesh, each peer asked
	// for its N with the request's filters.
	filter := []*flowpb.FlowFilter{{SourcePod: []string{"shop/"}}}
	last := m.getFlows(&observerpb.GetFlowsRequest{Number: 4, Whitelist: filter})
	if got := last.nodeTimes(); len(got) != 4 || respTime(last.flows[0]) != at(26).UnixNano() || respTime(last.flows[3]) != at(29).UnixNano() {
		t.Errorf("last 4: %v, want 26..29", got)
	}
	first := m.getFlows(&observerpb.GetFlowsRequest{Number: 4, First: true})
	if got := first.nodeTimes(); len(got) != 4 || respTime(first.flows[0]) != at(0).UnixNano() || respTime(first.flows[3]) != at(3).UnixNano() {
		t.Errorf("first 4: %v, want 0..3", got)
	}
	for _, n := range nodes {
		reqs := n.obs.Requests()
		if len(reqs) != 3 {
			t.Fatalf("%s got %d requests, want 3", n.peer.Name, len(reqs))
		}
		if r := reqs[1]; r.Number != 4 || !proto.Equal(r.Whitelist[0], filter[0]) {
			t.Errorf("%s: request %v does not carry number and filters", n.peer.Name, r)
		}
	}
	since := m.getFlows(&observerpb.GetFlowsRequest{Since: timestamppb.New(at(25)), Until: timestamppb.New(at(27))})
	if got := since.nodeTimes(); len(got) != 3 || !since.sorted() {
		t.Errorf("since 25 until 27: %v", got)
	}
}

// recvUntil reads st until cond holds for a response, returning the flows
// read on the way.
func recvUntil(t *testing.T, st grpc.ServerStreamingClient[observerpb.GetFlowsResponse], what string, cond func(*observerpb.GetFlowsResponse) bool) []*observerpb.GetFlowsResponse {
	t.Helper()
	var flows []*observerpb.GetFlowsResponse
	for {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("waiting for %s: %v (after %d flows)", what, err, len(flows))
		}
		if resp.GetFlow() != nil {
			flows = append(flows, resp)
		}
		if cond(resp) {
			return flows
		}
	}
}

func isStatus(state relaypb.NodeState, name string) func(*observerpb.GetFlowsResponse) bool {
	return func(r *observerpb.GetFlowsResponse) bool {
		st, names := statusOf(r)
		return st == state && slices.Contains(names, name)
	}
}

func isFlowAt(ms int) func(*observerpb.GetFlowsResponse) bool {
	return func(r *observerpb.GetFlowsResponse) bool {
		return r.GetFlow() != nil && respTime(r) == at(ms).UnixNano()
	}
}

// A following client: flows from all peers in time order; a peer killed
// mid-stream is reported unavailable and the others keep flowing; when it
// is back it is reported connected and resumes after its last flow; a peer
// that leaves the peer set is reported gone.
func TestFollowSurvivesPeersGoing(t *testing.T) {
	m, nodes := threeNodes(t, func(c *Config) { c.SortWindow = time.Second })
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	st, err := observerpb.NewObserverClient(m.conn).GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true, Number: 2})
	if err != nil {
		t.Fatal(err)
	}
	// Each peer's last 2, merged: 24..29.
	got := recvUntil(t, st, "the history", isFlowAt(29))
	if len(got) != 6 || respTime(got[0]) != at(24).UnixNano() {
		t.Fatalf("history: %d flows from %v", len(got), time.Unix(0, respTime(got[0])).UTC())
	}
	for _, n := range nodes {
		waitFollowers(t, n.obs, 1)
	}
	for k := 10; k < 20; k++ {
		for i, n := range nodes {
			n.obs.Add(relaytest.Flow(n.peer.Name, at(3*k+i), "shop", "pod"))
		}
	}
	live := recvUntil(t, st, "the live flows", isFlowAt(59))
	if len(live) != 30 || !(flowsResult{flows: live}).sorted() {
		t.Fatalf("live flows: %d, sorted %v", len(live), (flowsResult{flows: live}).sorted())
	}

	nodes[1].stop() // east/n2 dies
	recvUntil(t, st, "east/n2 unavailable", isStatus(relaypb.NodeState_NODE_UNAVAILABLE, "east/n2"))
	nodes[0].obs.Add(relaytest.Flow("east/n1", at(60), "shop", "pod"))
	nodes[2].obs.Add(relaytest.Flow("west/n1", at(62), "shop", "pod"))
	recvUntil(t, st, "west/n1's flow while east/n2 is down", isFlowAt(62))

	nodes[1].obs.Add(relaytest.Flow("east/n2", at(61), "shop", "pod")) // while down: its history
	m.restart(nodes[1])
	recvUntil(t, st, "east/n2 connected again", isStatus(relaypb.NodeState_NODE_CONNECTED, "east/n2"))
	got = recvUntil(t, st, "east/n2's flow kept while it was down", isFlowAt(61))
	for _, f := range got {
		if f.NodeName == "east/n2" && respTime(f) != at(61).UnixNano() {
			t.Errorf("east/n2 resent %s", time.Unix(0, respTime(f)).UTC())
		}
	}

	m.announce("west/n1")
	recvUntil(t, st, "west/n1 gone", isStatus(relaypb.NodeState_NODE_GONE, "west/n1"))
	waitFollowers(t, nodes[2].obs, 0)
}

func waitFollowers(t *testing.T, o *relaytest.Observer, want int) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		n, changed := o.Followers()
		if n == want {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%s: %d followers, want %d", o.Node, n, want)
		}
	}
}

func TestServerStatusAndNodes(t *testing.T) {
	m, nodes := threeNodes(t, nil)
	cl := observerpb.NewObserverClient(m.conn)
	ctx := t.Context()
	ss, err := cl.ServerStatus(ctx, &observerpb.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if ss.NumFlows != 30 || ss.MaxFlows != 3*4096 || ss.NumConnectedNodes.GetValue() != 3 || ss.NumUnavailableNodes.GetValue() != 0 || !strings.HasPrefix(ss.Version, "clustermesh-relay") {
		t.Errorf("status %v", ss)
	}
	ns, err := cl.GetNamespaces(ctx, &observerpb.GetNamespacesRequest{})
	if err != nil || len(ns.Namespaces) != 2 || ns.Namespaces[0].Cluster != "east" || ns.Namespaces[1].Cluster != "west" {
		t.Errorf("namespaces %v, %v: want shop in east and in west", ns, err)
	}

	nodes[1].stop()
	m.announce("west/n1")
	testenv.WaitFor(t, 15*time.Second, "east/n2 unavailable and west/n1 gone", func() bool {
		resp, err := cl.GetNodes(ctx, &observerpb.GetNodesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, n := range resp.Nodes {
			got = append(got, n.Name+"="+n.State.String())
		}
		return slices.Equal(got, []string{"east/n1=NODE_CONNECTED", "east/n2=NODE_UNAVAILABLE", "west/n1=NODE_GONE"})
	})
	resp, _ := cl.GetNodes(ctx, &observerpb.GetNodesRequest{})
	if n := resp.Nodes[0]; n.Version != "relaytest" || n.NumFlows != 10 || n.Address != nodes[0].peer.Address || n.Tls.ServerName != "n1.east.hubble-grpc.clustermesh.io" || !n.Tls.Enabled {
		t.Errorf("east/n1: %v", n)
	}
	ss, err = cl.ServerStatus(ctx, &observerpb.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if ss.NumConnectedNodes.GetValue() != 1 || ss.NumUnavailableNodes.GetValue() != 1 || !slices.Equal(ss.UnavailableNodes, []string{"east/n2"}) || ss.NumFlows != 10 {
		t.Errorf("status with east/n2 down and west/n1 gone: %v", ss)
	}
	// A request that does not follow reports east/n2 and does not wait.
	start := time.Now()
	r := m.getFlows(&observerpb.GetFlowsRequest{})
	if len(r.flows) != 10 || time.Since(start) > 5*time.Second {
		t.Errorf("flows with east/n2 down: %d in %s", len(r.flows), time.Since(start))
	}
	if !slices.ContainsFunc(r.status, isStatus(relaypb.NodeState_NODE_UNAVAILABLE, "east/n2")) {
		t.Errorf("east/n2 not reported unavailable: %v", r.status)
	}
}

// A peer whose certificate is not for its announced name is refused: it is
// unavailable, and never asked for flows.
func TestPeerWithWrongCertificateRefused(t *testing.T) {
	m := newTestMesh(t)
	good := m.addNode("east", "n1", "east")
	rogue := m.addNode("east", "rogue", "west") // west's certificate, announced as east
	good.obs.Add(relaytest.Flow("east/n1", at(1), "shop", "a"))
	rogue.obs.Add(relaytest.Flow("east/rogue", at(2), "shop", "b"))
	m.announce()
	m.startRelay(nil)
	m.waitConnected(1)
	r := m.getFlows(&observerpb.GetFlowsRequest{})
	if len(r.flows) != 1 || r.flows[0].NodeName != "east/n1" {
		t.Errorf("flows %v, want only east/n1's", r.nodeTimes())
	}
	if !slices.ContainsFunc(r.status, isStatus(relaypb.NodeState_NODE_UNAVAILABLE, "east/rogue")) {
		t.Errorf("east/rogue not reported unavailable: %v", r.status)
	}
	if n := len(rogue.obs.Requests()); n != 0 {
		t.Errorf("the rogue peer was asked %d times", n)
	}
}

// The relay's own endpoint: mutual TLS on TCP (a client without a
// certificate of the mesh CA is refused), the unix socket without, the
// health check the hubble CLI asks, plaintext refused off loopback.
func TestRelayEndpoint(t *testing.T) {
	m := newTestMesh(t)
	m.addNode("east", "n1", "east").obs.Add(relaytest.Flow("east/n1", at(1), "shop", "a"))
	m.announce()
	b := m.bundle("east")
	srv, err := m.ca.IssueServer("hubble-relay", []string{"hubble-relay.clustermesh.io"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Save(m.dir, "relay"); err != nil {
		t.Fatal(err)
	}
	sock := m.dir + "/relay.sock"
	m.startRelay(func(c *Config) {
		c.ServerCertFile, c.ServerKeyFile, c.UnixSocket = m.dir+"/relay.crt", m.dir+"/relay.key", sock
	})
	m.waitConnected(1)

	clientTLS, err := ca.ClientTLSConfig(b.ObserverClientCert(), b.ObserverClientKey(), b.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	clientTLS.ServerName = "hubble-relay.clustermesh.io"
	noCert := clientTLS.Clone()
	noCert.Certificates = nil
	for _, tc := range []struct {
		name   string
		target string
		creds  credentials.TransportCredentials
		ok     bool
	}{
		{"mTLS", m.relay.Addr().String(), credentials.NewTLS(clientTLS), true},
		{"no client certificate", m.relay.Addr().String(), credentials.NewTLS(noCert), false},
		{"plaintext on TCP", m.relay.Addr().String(), insecure.NewCredentials(), false},
		{"unix socket", "unix://" + sock, insecure.NewCredentials(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := grpc.NewClient(tc.target, grpc.WithTransportCredentials(tc.creds))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: HealthService})
			if !tc.ok {
				if err == nil || status.Code(err) != codes.Unavailable {
					t.Errorf("health check: %v, %v; want Unavailable", hc, err)
				}
				return
			}
			if err != nil || hc.Status != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("health check: %v, %v", hc, err)
			}
			ss, err := observerpb.NewObserverClient(conn).ServerStatus(ctx, &observerpb.ServerStatusRequest{})
			if err != nil || ss.NumFlows != 1 {
				t.Errorf("ServerStatus: %v, %v", ss, err)
			}
			_, err = observerpb.NewObserverClient(conn).GetAgentEvents(ctx, &observerpb.GetAgentEventsRequest{})
			if err == nil {
				st, _ := observerpb.NewObserverClient(conn).GetAgentEvents(ctx, &observerpb.GetAgentEventsRequest{})
				_, err = st.Recv()
			}
			if status.Code(err) != codes.Unimplemented {
				t.Errorf("GetAgentEvents: %v, want Unimplemented", err)
			}
		})
	}

	r, err := New(Config{PeerServices: []string{"unix:///nowhere"}, ListenAddress: "0.0.0.0:0", InsecurePeers: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(t.Context()); !errors.Is(err, ErrPlaintextNotLocal) {
		t.Errorf("plaintext on 0.0.0.0: %v, want ErrPlaintextNotLocal", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no peer service", Config{ListenAddress: "127.0.0.1:0", InsecurePeers: true}, "no peer service"},
		{"nothing to serve", Config{PeerServices: []string{"unix:///x"}, InsecurePeers: true}, "nothing to serve on"},
		{"bad peer service", Config{PeerServices: []string{"host"}, ListenAddress: "127.0.0.1:0", InsecurePeers: true}, "want unix:///path or host:port"},
		{"no client certificate", Config{PeerServices: []string{"unix:///x"}, ListenAddress: "127.0.0.1:0"}, "--tls-client-cert-file"},
		{"certificate without CA", Config{PeerServices: []string{"unix:///x"}, ListenAddress: "127.0.0.1:0", ClientCertFile: "a", ClientKeyFile: "b"}, "--tls-ca-file"},
	} {
		_, err := New(tc.cfg)
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrInvalidConfig saying %q", tc.name, err, tc.want)
		}
	}
}

// A request the peers refuse as invalid is refused by the relay, with
// their reason, and not reported as unavailable peers.
func TestInvalidRequestRefused(t *testing.T) {
	m, _ := threeNodes(t, nil)
	cl := observerpb.NewObserverClient(m.conn)
	for _, req := range []*observerpb.GetFlowsRequest{
		{Follow: true, First: true, Number: 1},
		{FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"nope"}}},
	} {
		st, err := cl.GetFlows(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		for {
			resp, err := st.Recv()
			if err == nil {
				if s, _ := statusOf(resp); s == relaypb.NodeState_NODE_UNAVAILABLE {
					t.Errorf("%v: peers reported unavailable", req)
				}
				continue
			}
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("%v: %v, want InvalidArgument", req, err)
			}
			break
		}
	}
}
