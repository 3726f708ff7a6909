package observe

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// serveUnix serves h's flows on a unix socket in a temporary directory
// until the test ends, and returns its path.
func serveUnix(t *testing.T, h *Hub) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(Path, h.Handler())
	srv := &http.Server{Handler: mux}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ln) })
	t.Cleanup(func() { srv.Close(); wg.Wait() })
	return sock
}

func TestFlowsHTTP(t *testing.T) {
	h, src := runHub(t, Config{LostInterval: 5 * time.Millisecond})
	sock := serveUnix(t, h)
	send(t, h, src, 1, 6)
	ctx := context.Background()

	// Without follow: the last matching flows, then the end.
	var got []Event
	collect := func(ev Event) error { got = append(got, ev); return nil }
	if err := Observe(ctx, sock, Filter{Verdict: VerdictDropped}, 2, false, collect); err != nil {
		t.Fatal(err)
	}
	if p := ports(got); p != "4 6" {
		t.Errorf("last 2 dropped: %s", p)
	}
	if got[0].Flow.Destination.Pod != "checkout-0" || got[0].Flow.Source.Cluster != "west" {
		t.Errorf("flow not enriched: %+v", got[0].Flow)
	}

	// Follow: the last one, then new flows as they come, until the client
	// cancels; the server lets the subscription go.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan Event, 16)
	done := make(chan error, 1)
	go func() {
		done <- Observe(fctx, sock, Filter{ToPod: "shop/checkout"}, 1, true, func(ev Event) error { events <- ev; return nil })
	}()
	next := func() Event {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case err := <-done:
			t.Fatalf("Observe ended: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("no event")
		}
		return Event{}
	}
	if ev := next(); ev.Flow.Source.Port != 6 {
		t.Fatalf("first event: %+v", ev)
	}
	testenv.WaitFor(t, 5*time.Second, "the subscriber", func() bool { return h.Stats().Subscribers == 1 })
	send(t, h, src, 7, 7)
	if ev := next(); ev.Flow.Source.Port != 7 {
		t.Fatalf("followed event: %+v", ev)
	}
	src.lost.Store(4)
	if ev := next(); ev.Lost == nil || ev.Lost.Source != LostDatapath || ev.Lost.Count != 4 {
		t.Fatalf("lost notice: %+v", ev)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Observe after cancel = %v", err)
	}
	testenv.WaitFor(t, 5*time.Second, "the server to drop the subscriber", func() bool { return h.Stats().Subscribers == 0 })

	// fn's error stops the stream.
	stop := errors.New("enough")
	if err := Observe(ctx, sock, Filter{}, -1, false, func(Event) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("Observe with a failing fn = %v", err)
	}
}

func TestFlowsHTTPErrors(t *testing.T) {
	h, _ := runHub(t, Config{})
	sock := serveUnix(t, h)
	ctx := context.Background()
	nop := func(Event) error { return nil }

	// A bad query is answered 400 with the reason, which the client shows.
	for q, want := range map[string]string{
		"verdict=DROPED": `verdict "DROPED": want FORWARDED or DROPPED`,
		"last=x":         `last "x": want a number`,
		"follow=maybe":   `follow "maybe": want 1 or 0`,
		"pod=a":          `unknown filter "pod"`,
	} {
		if status, body := get(t, sock, Path+"?"+q); status != http.StatusBadRequest || !strings.Contains(body, want) {
			t.Errorf("%s: %d %s, want 400 with %q", q, status, body, want)
		}
	}
	err := Observe(ctx, sock, Filter{Verdict: "DROPED"}, 1, false, nop)
	if err == nil || !strings.Contains(err.Error(), `reading flows from the agent at `+sock+`: it answered 400 Bad Request: verdict "DROPED": want FORWARDED or DROPPED`) {
		t.Errorf("Observe with a bad filter = %v", err)
	}
	if status, _ := get(t, sock, "/nothing"); status != http.StatusNotFound {
		t.Errorf("GET /nothing: %d", status)
	}

	// Nothing listening: the address is named.
	missing := filepath.Join(t.TempDir(), "none.sock")
	if err := Observe(ctx, missing, Filter{}, 1, false, nop); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "cannot reach the agent at "+missing) {
		t.Errorf("Observe of nothing = %v", err)
	}
	// An address that serves no flows.
	other := filepath.Join(t.TempDir(), "other.sock")
	ln, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler()}
	go srv.Serve(ln)
	defer srv.Close()
	if err := Observe(ctx, other, Filter{}, 1, false, nop); !errors.Is(err, ErrNotServed) {
		t.Errorf("Observe of an agent without flows = %v", err)
	}
}

// get returns the status and body of GET path on the socket.
func get(t *testing.T, sock, path string) (int, string) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Get("http://agent" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}
