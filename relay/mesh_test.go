package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/peerservice"
	"github.com/clustermesh/clustermesh/relay/relaytest"
)

// testMesh is a mesh of small Observer servers of the test's own, each
// serving with its cluster's Observer certificate on loopback, announced by
// a peer service on a unix socket, and a relay in between.
type testMesh struct {
	t       testing.TB
	ca      *ca.CA
	dir     string
	bundles map[string]ca.Bundle
	ps      *peerservice.Server
	psPath  string

	mu    sync.Mutex
	nodes map[string]*testNode

	relay *Relay
	conn  *grpc.ClientConn // to the relay
}

// testNode is one node's Observer server.
type testNode struct {
	obs     *relaytest.Observer
	peer    peerservice.Peer
	ln      net.Listener
	stop    func()
	cluster string
}

func newTestMesh(t testing.TB) *testMesh {
	t.Helper()
	c, err := ca.New("mesh", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "relay")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	m := &testMesh{t: t, ca: c, dir: dir, bundles: map[string]ca.Bundle{}, nodes: map[string]*testNode{},
		ps: peerservice.NewServer(nil, 0), psPath: filepath.Join(dir, "peer.sock")}
	ln, err := net.Listen("unix", m.psPath)
	if err != nil {
		t.Fatal(err)
	}
	m.serve(ln, nil, m.ps.Register)
	return m
}

// bundle is the Observer certificates of cluster.
func (m *testMesh) bundle(cluster string) ca.Bundle {
	m.t.Helper()
	if b, ok := m.bundles[cluster]; ok {
		return b
	}
	b := ca.Bundle{Dir: filepath.Join(m.dir, cluster), Cluster: cluster}
	if err := m.ca.IssueObserverBundle(b); err != nil {
		m.t.Fatal(err)
	}
	m.bundles[cluster] = b
	return b
}

// serve runs a gRPC server on ln until the test ends (or stop).
func (m *testMesh) serve(ln net.Listener, creds credentials.TransportCredentials, register func(*grpc.Server)) (stop func()) {
	var opts []grpc.ServerOption
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	g := grpc.NewServer(opts...)
	register(g)
	done := make(chan struct{})
	go func() { defer close(done); g.Serve(ln) }()
	var once sync.Once
	stop = func() { once.Do(func() { g.Stop(); <-done }) }
	m.t.Cleanup(stop)
	return stop
}

// addNode starts the Observer server of cluster/node on loopback with
// the certificate of certCluster (its own cluster's, unless a test lies).
func (m *testMesh) addNode(cluster, node, certCluster string) *testNode {
	m.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		m.t.Fatal(err)
	}
	n := &testNode{
		obs: relaytest.NewObserver(cluster + "/" + node), ln: ln, cluster: certCluster,
		peer: peerservice.Peer{Name: cluster + "/" + node, Address: ln.Addr().String(), TLSServerName: ca.ObserverServerName(cluster, node)},
	}
	m.start(n, ln)
	m.mu.Lock()
	m.nodes[n.peer.Name] = n
	m.mu.Unlock()
	return n
}

func (m *testMesh) start(n *testNode, ln net.Listener) {
	m.t.Helper()
	b := m.bundle(n.cluster)
	cfg, err := ca.ServerTLSConfig(b.ObserverCert(), b.ObserverKey(), b.CAFile())
	if err != nil {
		m.t.Fatal(err)
	}
	n.stop = m.serve(ln, credentials.NewTLS(cfg), n.obs.Register)
}

// restart serves n again on its address (after kill).
func (m *testMesh) restart(n *testNode) {
	m.t.Helper()
	ln, err := net.Listen("tcp", n.peer.Address)
	if err != nil {
		m.t.Fatal(err)
	}
	m.start(n, ln)
}

// announce tells the peer service every node but those left out.
func (m *testMesh) announce(leftOut ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	skip := map[string]bool{}
	for _, n := range leftOut {
		skip[n] = true
	}
	var peers []peerservice.Peer
	for name, n := range m.nodes {
		if !skip[name] {
			peers = append(peers, n.peer)
		}
	}
	m.ps.Update(peers)
}

// startRelay runs a relay on loopback (plaintext) reading the peer
// service, with the client certificate of east: m's relay.
func (m *testMesh) startRelay(edit func(*Config)) {
	m.t.Helper()
	m.relay, m.conn = m.runRelay(edit)
}

// runRelay runs another relay and returns it with a plaintext client of it
// (nil when it does not listen on TCP).
func (m *testMesh) runRelay(edit func(*Config)) (*Relay, *grpc.ClientConn) {
	m.t.Helper()
	b := m.bundle("east")
	cfg := Config{
		PeerServices: []string{"unix://" + m.psPath}, ListenAddress: "127.0.0.1:0",
		CAFile: b.CAFile(), ClientCertFile: b.ObserverClientCert(), ClientKeyFile: b.ObserverClientKey(),
		SortWindow: 100 * time.Millisecond, RetryInterval: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		ResyncGrace: 100 * time.Millisecond,
	}
	if edit != nil {
		edit(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		m.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	m.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			m.t.Errorf("relay Run: %v", err)
		}
	})
	select {
	case <-r.Serving():
	case err := <-done:
		m.t.Fatalf("relay Run: %v", err)
	}
	if r.Addr() == nil {
		return r, nil
	}
	conn, err := grpc.NewClient(r.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { conn.Close() })
	return r, conn
}

// waitConnected waits until the relay's pool has want connected peers.
func (m *testMesh) waitConnected(want int) {
	m.t.Helper()
	m.waitConnectedOn(m.relay, want)
}

func (m *testMesh) waitConnectedOn(r *Relay, want int) {
	m.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		n := 0
		for _, p := range r.server.pool.list(false) {
			if !p.unavailable() && p.state.String() == "READY" {
				n++
			}
		}
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("timed out waiting for %d connected peers (have %d)", want, n)
		}
		select {
		case <-r.server.pool.changes():
		case <-time.After(time.Until(deadline)):
		}
	}
}

// flows collects a GetFlows call to the relay: the flows in order, and the
// node status events.
type flowsResult struct {
	flows  []*observerpb.GetFlowsResponse
	status []*observerpb.GetFlowsResponse
}

func (r flowsResult) nodeTimes() []string {
	var out []string
	for _, f := range r.flows {
		out = append(out, f.NodeName+"@"+f.GetFlow().GetTime().AsTime().Format("15:04:05.000"))
	}
	return out
}

func (r flowsResult) sorted() bool {
	return sort.SliceIsSorted(r.flows, func(i, j int) bool {
		return respTime(r.flows[i]) < respTime(r.flows[j])
	})
}

func (m *testMesh) getFlows(req *observerpb.GetFlowsRequest) flowsResult {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(m.t.Context(), 20*time.Second)
	defer cancel()
	st, err := observerpb.NewObserverClient(m.conn).GetFlows(ctx, req)
	if err != nil {
		m.t.Fatal(err)
	}
	var r flowsResult
	for {
		resp, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return r
		}
		if err != nil {
			m.t.Fatalf("GetFlows: %v", err)
		}
		if resp.GetNodeStatus() != nil {
			r.status = append(r.status, resp)
		} else {
			r.flows = append(r.flows, resp)
		}
	}
}

// respTime is the time of a response: its own, else its flow's.
func respTime(r *observerpb.GetFlowsResponse) int64 {
	if t := r.GetTime(); t != nil {
		return t.AsTime().UnixNano()
	}
	return r.GetFlow().GetTime().AsTime().UnixNano()
}
