package observe

import (
	"context"
	"crypto/tls"
	"math"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/peerservice"
	"github.com/clustermesh/clustermesh/relay"
)

// TestFiguresRelay prints the relay's figures with the real datapath
// (make bench): the policy program drops relayRate real UDP packets a
// second (one drop event each) for relayFor; a hub reads them and serves
// them as an agent does (observe.Server on TCP with mutual TLS from the
// mesh CA); a following gRPC client counts the flows it gets, first
// directly from the agent, then through a relay that found the agent with
// a peer service, in the same run:
//
//   - flow.relay.direct_per_s, flow.relay.per_s: flows per second each
//     client got, from its first flow to its last;
//   - flow.relay.throughput_ratio: the relay's rate ÷ the direct rate;
//   - flow.relay.lost: packets dropped by the program whose flow did not
//     reach the client through the relay (lost anywhere on the path).
func TestFiguresRelay(t *testing.T) {
	figure.Require(t)
	inNS, conn, fr := dropFigure(t)
	h := NewHub(Config{Enricher: newStaticEnricher(), NodeName: "east/node-1"})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Go(func() { h.Run(ctx, fr) })

	m := newFigureMesh(t, h)
	direct := m.follow(t, h, inNS, conn, m.agent)
	viaRelay := m.follow(t, h, inNS, conn, m.relay)
	t.Logf("direct: %d of %d flows, %.0f/s; relay: %d of %d flows, %.0f/s",
		direct.got, direct.sent, direct.perSecond(), viaRelay.got, viaRelay.sent, viaRelay.perSecond())
	figure.Print("flow.relay.direct_per_s", math.Round(direct.perSecond()), "flows/s")
	figure.Print("flow.relay.per_s", math.Round(viaRelay.perSecond()), "flows/s")
	figure.Print("flow.relay.throughput_ratio", math.Round(viaRelay.perSecond()/direct.perSecond()*1000)/1000, "ratio")
	figure.Print("flow.relay.lost", float64(viaRelay.sent-viaRelay.got), "flows")
}

// Rate and length of each phase of TestFiguresRelay.
const (
	relayRate = 50_000 // packets (drop events) a second
	relayFor  = 4 * time.Second
)

// figureMesh is one agent's Observer on TCP with mutual TLS, a peer
// service announcing it, and a relay; agent and relay are client
// connections to each.
type figureMesh struct {
	agent, relay *grpc.ClientConn
}

func newFigureMesh(t *testing.T, h *Hub) *figureMesh {
	t.Helper()
	dir := t.TempDir()
	mca, err := ca.New("figure mesh", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := mca.Save(dir); err != nil {
		t.Fatal(err)
	}
	b := ca.Bundle{Dir: dir, Cluster: "east"}
	if err := mca.IssueObserverBundle(b); err != nil {
		t.Fatal(err)
	}
	srvTLS, err := ca.ServerTLSConfig(b.ObserverCert(), b.ObserverKey(), b.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(srvTLS)))
	NewServer(h, "").Register(g)
	agentAddr := serveFigure(t, g, "tcp", "127.0.0.1:0")

	ps := peerservice.NewServer(nil, 0)
	ps.Update([]peerservice.Peer{{Name: "east/node-1", Address: agentAddr, TLSServerName: ca.ObserverServerName("east", "node-1")}})
	pg := grpc.NewServer()
	ps.Register(pg)
	psSock := filepath.Join(dir, "peers.sock")
	serveFigure(t, pg, "unix", psSock)

	cfg := relay.DefaultConfig()
	cfg.PeerServices, cfg.UnixSocket = []string{"unix://" + psSock}, filepath.Join(dir, "relay.sock")
	cfg.CAFile, cfg.ClientCertFile, cfg.ClientKeyFile = b.CAFile(), b.ObserverClientCert(), b.ObserverClientKey()
	r, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-r.Serving()

	cliTLS, err := ca.ClientTLSConfig(b.ObserverClientCert(), b.ObserverClientKey(), b.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	cliTLS.ServerName = ca.ObserverServerName("east", "node-1")
	m := &figureMesh{}
	m.agent = dialFigure(t, agentAddr, cliTLS)
	m.relay = dialFigure(t, "unix://"+cfg.UnixSocket, nil)
	return m
}

func serveFigure(t *testing.T, g *grpc.Server, network, addr string) string {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); g.Serve(l) }()
	t.Cleanup(func() { g.Stop(); <-done })
	return l.Addr().String()
}

func dialFigure(t *testing.T, target string, tc *tls.Config) *grpc.ClientConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, target, tc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// phase is what one following client got of the packets sent.
type phase struct {
	sent, got   int
	first, last time.Time
}

func (p phase) perSecond() float64 {
	if p.got < 2 {
		return 0
	}
	return float64(p.got-1) / p.last.Sub(p.first).Seconds()
}

// follow has a client of c follow the drops, sends relayRate packets a
// second for relayFor once the hub serves it, and counts what arrives
// until every packet's flow did or nothing came for a second.
func (m *figureMesh) follow(t *testing.T, h *Hub, inNS func(nsOp), conn *net.UDPConn, c *grpc.ClientConn) phase {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	testenv.WaitFor(t, 10*time.Second, "the previous follower gone", func() bool { return h.Stats().Subscribers == 0 })
	st, err := observerpb.NewObserverClient(c).GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true,
		Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "the agent to serve the follower", func() bool { return h.Stats().Subscribers == 1 })
	var p phase
	got := make(chan time.Time, 1<<16)
	go func() {
		defer close(got)
		for {
			r, err := st.Recv()
			if err != nil {
				return
			}
			if r.GetFlow() != nil {
				got <- time.Now()
			}
		}
	}()
	sent := make(chan int, 1)
	go func() { sent <- sendAtRate(inNS, conn, time.Now(), relayRate, relayFor) }()
	idle := time.NewTimer(time.Hour) // armed once every packet was sent
	defer idle.Stop()
	p.sent = -1
	for p.sent < 0 || p.got < p.sent {
		select {
		case n := <-sent:
			p.sent = n
			idle.Reset(time.Second)
		case at, ok := <-got:
			if !ok {
				t.Fatalf("the stream ended after %d flows", p.got)
			}
			if p.got == 0 {
				p.first = at
			}
			p.got, p.last = p.got+1, at
			if p.sent >= 0 {
				idle.Reset(time.Second)
			}
		case <-idle.C:
			return p
		}
	}
	return p
}
