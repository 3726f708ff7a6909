package ui

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clustermesh/clustermesh/flowmap"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/observe"
)

// observer is a real Observer server (an observe.Hub) on a unix socket.
type observer struct {
	hub  *observe.Hub
	sock string
}

func startObserver(t *testing.T) observer {
	t.Helper()
	o := observer{hub: observe.NewHub(observe.Config{NodeName: "east/node-1"}), sock: filepath.Join(t.TempDir(), "hubble.sock")}
	l, err := net.Listen("unix", o.sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	observe.NewServer(o.hub, "").Register(g)
	var wg sync.WaitGroup
	wg.Go(func() { g.Serve(l) })
	t.Cleanup(func() { g.Stop(); wg.Wait() })
	return o
}

func flow(src, dst string, port uint32, v flowpb.Verdict) *flowpb.Flow {
	ep := func(s string) *flowpb.Endpoint {
		p := strings.Split(s, "/")
		return &flowpb.Endpoint{ClusterName: p[0], Namespace: p[1], PodName: p[2] + "-0", Identity: 70000,
			Workloads: []*flowpb.Workload{{Kind: "Deployment", Name: p[2]}}}
	}
	return &flowpb.Flow{Time: timestamppb.Now(), Source: ep(src), Destination: ep(dst), Verdict: v, NodeName: "east/node-1",
		IP: &flowpb.IP{Source: "10.0.0.1", Destination: "10.0.1.1"},
		L4: &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 40000, DestinationPort: port}}}}
}

// startUI runs a UI following o on a loopback port; it returns its base
// URL.
func startUI(t *testing.T, o observer, cfg Config) (string, *Server) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+o.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Client = observerpb.NewObserverClient(conn)
	cfg.Interval = 50 * time.Millisecond
	s := New(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		conn.Close()
	})
	return "http://" + ln.Addr().String(), s
}

func get(t *testing.T, u string, header ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
			continue
		}
		req.Header.Set(header[i], header[i+1])
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// events reads the server-sent snapshots of u until ctx ends.
func events(ctx context.Context, t *testing.T, u string) <-chan flowmap.Snapshot {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("events: %s %s", resp.Status, ct)
	}
	ch := make(chan flowmap.Snapshot, 64)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var s flowmap.Snapshot
				if json.Unmarshal([]byte(d), &s) == nil {
					select {
					case ch <- s:
					case <-ctx.Done():
						return
					}
				}
			}
		}
	}()
	return ch
}

func hasEdge(s flowmap.Snapshot, id string) (flowmap.Edge, bool) {
	for _, e := range s.Edges {
		if e.ID == id {
			return e, true
		}
	}
	return flowmap.Edge{}, false
}

// waitEdge reads snapshots until one has the edge with cond, or fails.
func waitEdge(t *testing.T, ch <-chan flowmap.Snapshot, id string, cond func(flowmap.Edge) bool) flowmap.Edge {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case s, ok := <-ch:
			if !ok {
				t.Fatalf("the event stream ended before edge %q", id)
			}
			if e, ok := hasEdge(s, id); ok && cond(e) {
				return e
			}
		case <-deadline:
			t.Fatalf("no edge %q within 10s", id)
		}
	}
}

// TestLiveMapAndFlows: the page and its script are served with a strict
// policy, flows published on the observer after the page opened arrive as
// edges, a drop changes its edge's share, and the edge's list holds the
// dropped flow as observe prints it.
func TestLiveMapAndFlows(t *testing.T) {
	o := startObserver(t)
	o.hub.Publish(flow("west/shop/frontend", "east/shop/checkout", 8080, flowpb.Verdict_FORWARDED)) // before: the backlog
	base, _ := startUI(t, o, Config{})

	resp, body := get(t, base+"/")
	if resp.StatusCode != 200 || !strings.Contains(body, `<svg id="map"`) || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
		t.Fatalf("page: %s %q\n%s", resp.Status, resp.Header.Get("Content-Security-Policy"), body)
	}
	if resp, body := get(t, base+"/app.js"); resp.StatusCode != 200 || !strings.Contains(body, "EventSource") {
		t.Fatalf("app.js: %s", resp.Status)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := events(ctx, t, base+"/api/events")
	waitEdge(t, ch, "west/shop/frontend -> east/shop/checkout 8080/TCP", func(flowmap.Edge) bool { return true })

	o.hub.Publish(flow("north/shop/frontend", "east/shop/checkout", 8080, flowpb.Verdict_DROPPED))
	e := waitEdge(t, ch, "north/shop/frontend -> east/shop/checkout 8080/TCP", func(flowmap.Edge) bool { return true })
	if e.DropShare != 1 || !e.Dropped() {
		t.Errorf("edge %+v: want every flow dropped", e)
	}
	resp, body = get(t, base+"/api/flows?id="+url.QueryEscape(e.ID))
	if resp.StatusCode != 200 || !strings.Contains(body, "north/shop/frontend-0:40000") || !strings.Contains(body, `"verdict":"DROPPED"`) {
		t.Errorf("flows of the edge: %s %s", resp.Status, body)
	}
	resp, body = get(t, base+"/api/flows?id="+url.QueryEscape("east/shop/checkout"))
	if resp.StatusCode != 200 || strings.Count(body, `"line"`) != 2 {
		t.Errorf("flows of the node: %s %s", resp.Status, body)
	}
	if resp, _ := get(t, base+"/api/flows?id=nothing"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("flows of an unknown id: %s", resp.Status)
	}
	resp, body = get(t, base+"/api/map?verdict=DROPPED&cluster=north")
	var s flowmap.Snapshot
	if json.Unmarshal([]byte(body), &s) != nil || len(s.Edges) != 1 {
		t.Errorf("map of north's drops: %s %s", resp.Status, body)
	}
	if resp, _ := get(t, base+"/api/map?verdict=MAYBE"); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("bad verdict: %s", resp.Status)
	}
	if _, body := get(t, base+"/metrics"); !strings.Contains(body, "clustermesh_ui_flows_total 2") {
		t.Errorf("metrics:\n%s", body)
	}
}

// TestAccessControl: loopback answers to loopback names only; a token is
// required in each of its forms; an unguarded address is refused.
func TestAccessControl(t *testing.T) {
	o := startObserver(t)
	base, _ := startUI(t, o, Config{})
	if resp, _ := get(t, base+"/", "Host", "evil.example:12000"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("a foreign Host: %s, want 403 (DNS rebinding)", resp.Status)
	}
	if resp, _ := get(t, base+"/", "Host", "localhost:12000"); resp.StatusCode != 200 {
		t.Errorf("Host localhost: %s", resp.Status)
	}

	const token = "0123456789abcdef-token"
	base, _ = startUI(t, o, Config{Token: token})
	if resp, _ := get(t, base+"/api/map"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("without the token: %s", resp.Status)
	}
	if resp, _ := get(t, base+"/api/map", "Authorization", "Bearer wrong"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a wrong token: %s", resp.Status)
	}
	if resp, _ := get(t, base+"/api/map", "Authorization", "Bearer "+token); resp.StatusCode != 200 {
		t.Errorf("bearer: %s", resp.Status)
	}
	resp, _ := get(t, base+"/?token="+token+"&cluster=east")
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == TokenCookie {
			cookie = c
		}
	}
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/?cluster=east" || cookie == nil || !cookie.HttpOnly {
		t.Fatalf("?token=: %s to %q, cookie %v", resp.Status, resp.Header.Get("Location"), cookie)
	}
	if resp, _ := get(t, base+"/api/map", "Cookie", TokenCookie+"="+token, "Host", "mesh.example"); resp.StatusCode != 200 {
		t.Errorf("cookie (any Host with a token): %s", resp.Status)
	}

	s := New(Config{})
	err := s.Run(context.Background(), fakeAddrListener{addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 12000}})
	if !errors.Is(err, ErrUnguarded) {
		t.Errorf("Run beyond loopback without a guard: %v, want ErrUnguarded", err)
	}
}

// TestStreamComesBack: the page says when the flow stream is down, and the
// map fills once the observer answers.
func TestStreamComesBack(t *testing.T) {
	o := observer{hub: observe.NewHub(observe.Config{}), sock: filepath.Join(t.TempDir(), "hubble.sock")}
	base, s := startUI(t, o, Config{})
	testenv.WaitFor(t, 10*time.Second, "the page to say the stream is down", func() bool {
		_, body := get(t, base+"/api/map")
		return strings.Contains(body, `"connected":false`) && strings.Contains(body, `"error":"following flows`)
	})
	l, err := net.Listen("unix", o.sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	observe.NewServer(o.hub, "").Register(g)
	var wg sync.WaitGroup
	wg.Go(func() { g.Serve(l) })
	defer func() { g.Stop(); wg.Wait() }()
	o.hub.Publish(flow("west/shop/frontend", "east/shop/checkout", 8080, flowpb.Verdict_FORWARDED))
	testenv.WaitFor(t, 15*time.Second, "the flow in the map", func() bool { return s.Map().Stats().Flows == 1 })
	if _, body := get(t, base+"/api/map"); !strings.Contains(body, `"connected":true`) {
		t.Errorf("after the observer came: %s", body)
	}
}

// fakeAddrListener is a listener that says it listens on addr.
type fakeAddrListener struct{ addr net.Addr }

func (l fakeAddrListener) Accept() (net.Conn, error) { return nil, errors.New("not a listener") }
func (l fakeAddrListener) Close() error              { return nil }
func (l fakeAddrListener) Addr() net.Addr            { return l.addr }

// serveHub serves hub on sock until the returned stop is called.
func serveHub(t *testing.T, hub *observe.Hub, sock string) (stop func()) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	observe.NewServer(hub, "").Register(g)
	var wg sync.WaitGroup
	wg.Go(func() { g.Serve(l) })
	var once sync.Once
	stop = func() { once.Do(func() { g.Stop(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// TestStreamResumesWithoutDoubles: when the observer restarts, the map
// resumes after the last flow it read and counts none twice.
func TestStreamResumesWithoutDoubles(t *testing.T) {
	o := observer{hub: observe.NewHub(observe.Config{}), sock: filepath.Join(t.TempDir(), "hubble.sock")}
	stop := serveHub(t, o.hub, o.sock)
	at := timestamppb.Now()
	for range 3 { // three flows of one time: the resume point
		f := flow("west/shop/frontend", "east/shop/checkout", 8080, flowpb.Verdict_FORWARDED)
		f.Time = at
		o.hub.Publish(f)
	}
	base, s := startUI(t, o, Config{})
	testenv.WaitFor(t, 10*time.Second, "the three flows", func() bool { return s.Map().Stats().Flows == 3 })
	stop()
	testenv.WaitFor(t, 10*time.Second, "the stream down", func() bool {
		_, body := get(t, base+"/api/map")
		return strings.Contains(body, `"connected":false`)
	})
	serveHub(t, o.hub, o.sock)
	o.hub.Publish(flow("west/shop/frontend", "east/shop/checkout", 8080, flowpb.Verdict_DROPPED))
	testenv.WaitFor(t, 15*time.Second, "the new flow", func() bool { return s.Map().Stats().Flows >= 4 })
	snap := s.Map().Snapshot(time.Now(), flowmap.Query{})
	if e := snap.Edges[0]; e.Flows != 4 || e.Verdicts["FORWARDED"] != 3 {
		t.Errorf("edge after the restart: %d flows %v, want 3 forwarded and 1 dropped, none twice", e.Flows, e.Verdicts)
	}
}
