package peerservice

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	peerpb "github.com/cilium/cilium/api/v1/peer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// serve runs s on a unix socket until the test ends; it returns the
// socket's path and a function that stops the server now.
func serve(t *testing.T, s *Server, path string) (stop func()) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.Register(g)
	done := make(chan struct{})
	go func() { defer close(done); g.Serve(ln) }()
	var once sync.Once
	stop = func() { once.Do(func() { g.Stop(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "peers")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "peer.sock")
}

func dial(t *testing.T, path string) *grpc.ClientConn {
	t.Helper()
	c, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func peer(cluster, node, addr string) Peer {
	return Peer{Name: cluster + "/" + node, Address: addr, TLSServerName: node + "." + cluster + ".hubble-grpc.clustermesh.io"}
}

type change struct {
	typ  peerpb.ChangeNotificationType
	name string
	addr string
}

func recvN(t *testing.T, st grpc.ServerStreamingClient[peerpb.ChangeNotification], n int) []change {
	t.Helper()
	var out []change
	for range n {
		cn, err := st.Recv()
		if err != nil {
			t.Fatalf("after %v: %v", out, err)
		}
		if cn.GetTls().GetServerName() == "" {
			t.Errorf("%s: no TLS server name", cn.Name)
		}
		out = append(out, change{cn.Type, cn.Name, cn.Address})
	}
	return out
}

// A new stream gets every peer as added, then each difference Update makes.
func TestNotifyStreamsTheDifferences(t *testing.T) {
	s := NewServer(nil, 0)
	path := socketPath(t)
	serve(t, s, path)
	s.Update([]Peer{peer("east", "n1", "10.0.0.1:4244"), peer("west", "n1", "10.1.0.1:4244"), {Name: "bad", Address: "x"}})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := peerpb.NewPeerClient(dial(t, path)).Notify(ctx, &peerpb.NotifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	added := peerpb.ChangeNotificationType_PEER_ADDED
	if got, want := recvN(t, st, 2), []change{{added, "east/n1", "10.0.0.1:4244"}, {added, "west/n1", "10.1.0.1:4244"}}; !slices.Equal(got, want) {
		t.Fatalf("first notifications %v, want %v", got, want)
	}
	s.Update([]Peer{peer("east", "n1", "10.0.0.1:4245"), peer("east", "n2", "10.0.0.2:4244")})
	want := []change{
		{peerpb.ChangeNotificationType_PEER_DELETED, "west/n1", "10.1.0.1:4244"},
		{peerpb.ChangeNotificationType_PEER_UPDATED, "east/n1", "10.0.0.1:4245"},
		{added, "east/n2", "10.0.0.2:4244"},
	}
	if got := recvN(t, st, 3); !slices.Equal(got, want) {
		t.Fatalf("changes %v, want %v", got, want)
	}
	if got := s.Peers(); len(got) != 2 || got[0].Name != "east/n1" {
		t.Errorf("Peers() = %v", got)
	}
}

// A client that does not read is cut off once its buffer is full; the
// others are not held up.
func TestSlowStreamFallsBehind(t *testing.T) {
	s := NewServer(nil, 4)
	path := socketPath(t)
	serve(t, s, path)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	st, err := peerpb.NewPeerClient(dial(t, path)).Notify(ctx, &peerpb.NotifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "the stream to register", func() bool { return streams(s) == 1 })
	var peers []Peer
	for i := range 5 {
		peers = append(peers, peer("east", "n"+string(rune('a'+i)), "10.0.0.1:4244"))
	}
	s.Update(peers) // 5 > 4 waiting at once
	for {
		_, err := st.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("stream ended with %v, want ResourceExhausted", err)
		}
		break
	}
}

func streams(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// recorder keeps what a Watcher tells.
type recorder struct {
	mu   sync.Mutex
	sets [][]Peer
}

func (r *recorder) onChange(p []Peer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sets = append(r.sets, slices.Clone(p))
}

func (r *recorder) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.sets) == 0 {
		return nil
	}
	var out []string
	for _, p := range r.sets[len(r.sets)-1] {
		out = append(out, p.Name)
	}
	return out
}

// The Watcher follows the set across a restart of the peer service: what
// the new service does not announce is dropped after the grace period,
// what it announces is kept throughout.
func TestWatcherAcrossRestart(t *testing.T) {
	path := socketPath(t)
	s1 := NewServer(nil, 0)
	stop1 := serve(t, s1, path)
	s1.Update([]Peer{peer("east", "n1", "10.0.0.1:4244"), peer("west", "n1", "10.1.0.1:4244")})

	var r recorder
	w := &Watcher{Conn: dial(t, path), Target: path, OnChange: r.onChange, ResyncGrace: 300 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	testenv.WaitFor(t, 10*time.Second, "both peers", func() bool { return slices.Equal(r.names(), []string{"east/n1", "west/n1"}) })
	s1.Update([]Peer{peer("east", "n1", "10.0.0.1:4244")})
	testenv.WaitFor(t, 10*time.Second, "west/n1 deleted", func() bool { return slices.Equal(r.names(), []string{"east/n1"}) })
	s1.Update([]Peer{peer("east", "n1", "10.0.0.1:4244"), peer("west", "n1", "10.1.0.1:4244")})
	testenv.WaitFor(t, 10*time.Second, "west/n1 back", func() bool { return slices.Equal(r.names(), []string{"east/n1", "west/n1"}) })

	stop1()
	os.Remove(path)
	s2 := NewServer(nil, 0)
	s2.Update([]Peer{peer("east", "n1", "10.0.0.1:4244"), peer("east", "n2", "10.0.0.2:4244")})
	serve(t, s2, path)
	testenv.WaitFor(t, 10*time.Second, "the new service's set, west/n1 dropped after the grace", func() bool {
		return slices.Equal(r.names(), []string{"east/n1", "east/n2"})
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, set := range r.sets {
		if !slices.ContainsFunc(set, func(p Peer) bool { return p.Name == "east/n1" }) {
			t.Errorf("a set without east/n1, which every service announced: %v", set)
		}
	}
}

func TestFromNode(t *testing.T) {
	n := &statesource.Node{Name: "node.1", IPs: []netip.Addr{netip.MustParseAddr("fd00::1")}}
	p, err := FromLocalNode("east", n)
	want := Peer{Name: "east/node.1", Address: "[fd00::1]:4244", TLSServerName: "node-1.east.hubble-grpc.clustermesh.io"}
	if err != nil || p != want {
		t.Fatalf("FromLocalNode = %+v, %v; want %+v", p, err, want)
	}
	n.Annotations = map[string]string{wire.AnnotationHubbleAddress: "hubble.example:9000"}
	if p, err := FromLocalNode("east", n); err != nil || p.Address != "hubble.example:9000" {
		t.Errorf("with the annotation: %+v, %v", p, err)
	}
	if _, err := FromNode(&wire.Node{Name: "x", Cluster: "east"}); !errors.Is(err, wire.ErrInvalidAddress) {
		t.Errorf("a node without address: %v", err)
	}
}

func FuzzFromNotification(f *testing.F) {
	f.Add("east/n1", "10.0.0.1:4244", "n1.east.hubble-grpc.clustermesh.io")
	f.Add("east/n1", "10.0.0.1", "")
	f.Add("east/n1", "[fd00::1]", "")
	f.Add("/", ":", "")
	f.Fuzz(func(t *testing.T, name, addr, serverName string) {
		cn := &peerpb.ChangeNotification{Name: name, Address: addr, Tls: &peerpb.TLS{ServerName: serverName}}
		p, err := fromNotification(cn)
		if err != nil {
			return
		}
		if p.Check() != nil || p.Cluster() == "" || p.Node() == "" {
			t.Fatalf("accepted %+v", p)
		}
		if back, err := fromNotification(notification(p, peerpb.ChangeNotificationType_PEER_ADDED)); err != nil || back != p {
			t.Fatalf("round trip of %+v: %+v, %v", p, back, err)
		}
	})
}

func TestCollect(t *testing.T) {
	local := []statesource.Node{
		{Name: "n2", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}},
		{Name: "n1", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, Annotations: map[string]string{wire.AnnotationHubbleAddress: "10.0.0.1:4245"}},
	}
	remote := []*wire.Node{
		{Name: "w1", Cluster: "west", IPAddresses: []wire.NodeAddress{{Type: wire.InternalIP, IP: netip.MustParseAddr("10.1.0.1")}}},
		{Name: "w2", Cluster: "west"}, // no address: left out
	}
	peers, err := Collect("east", local, remote)
	var got []string
	for _, p := range peers {
		got = append(got, p.Name+"@"+p.Address)
	}
	if want := []string{"east/n1@10.0.0.1:4245", "east/n2@10.0.0.2:4244", "west/w1@10.1.0.1:4244"}; !slices.Equal(got, want) {
		t.Errorf("Collect = %v, want %v", got, want)
	}
	if err == nil || !strings.Contains(err.Error(), "west/w2") {
		t.Errorf("error %v does not name west/w2", err)
	}
}
