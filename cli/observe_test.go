package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/node"
	"github.com/clustermesh/clustermesh/observe"
	"github.com/clustermesh/clustermesh/wire"
)

// obsSource is a Source fed by a channel: the one fake of these tests (a
// real agent's flows.Reader is exercised by the agent's end-to-end test).
type obsSource struct{ ch chan flows.Flow }

func (s obsSource) Read(ctx context.Context) (flows.Flow, error) {
	select {
	case f := <-s.ch:
		return f, nil
	case <-ctx.Done():
		return flows.Flow{}, ctx.Err()
	}
}

func (obsSource) Lost() (uint64, error) { return 0, nil }

// obsEnricher knows east (1) and west (2), their identities and pods.
type obsEnricher struct{}

func (obsEnricher) Identity(id uint32) (wire.Labels, bool) {
	cluster := map[uint32]string{70001: "east", 132000: "west"}[id]
	if cluster == "" {
		return nil, false
	}
	return wire.NewLabels("k8s", map[string]string{wire.ClusterLabel: cluster, wire.NamespaceLabel: "shop"}), true
}

func (obsEnricher) ClusterName(id uint16) string { return map[uint16]string{1: "east", 2: "west"}[id] }

func (obsEnricher) Pod(ip netip.Addr) (string, string, bool) {
	pod := map[string]string{"10.1.1.11": "checkout-0", "10.2.1.5": "frontend-1"}[ip.String()]
	return "shop", pod, pod != ""
}

var obsTime = time.Date(2026, 11, 21, 3, 0, 0, 123e6, time.Local)

// obsFlow is flow i: west's frontend-1 (source port 41000+i) to east's
// checkout-0, dropped by policy when i is even, forwarded when odd.
func obsFlow(i int) flows.Flow {
	f := flows.Flow{
		Time: obsTime.Add(time.Duration(i) * time.Second), Verdict: flows.VerdictForwarded, Direction: datapath.Ingress,
		Src: netip.AddrPortFrom(netip.MustParseAddr("10.2.1.5"), uint16(41000+i)), Dst: netip.MustParseAddrPort("10.1.1.11:8080"),
		Protocol: datapath.TCP, SrcIdentity: 132000, DstIdentity: 70001, SrcCluster: 2, DstCluster: 1, Bytes: 60,
	}
	if i%2 == 0 {
		f.Verdict, f.DropReason = flows.VerdictDropped, flows.DropPolicyDenied
	}
	return f
}

// serveObserve runs a hub and serves it with the status on a unix socket,
// as the agent does, until ctx is done.
func serveObserve(t *testing.T, ctx context.Context) (*observe.Hub, chan flows.Flow, string, *sync.WaitGroup) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	hub := observe.NewHub(observe.Config{Enricher: obsEnricher{}})
	src := obsSource{ch: make(chan flows.Flow)}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := hub.Run(ctx, src); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	wg.Go(func() {
		status := func() any { return node.Status{Status: agentsync.Status{Cluster: "east"}} }
		if err := node.ServeStatus(ctx, sock, status, map[string]http.Handler{"GET " + observe.Path: hub.Handler()}); err != nil {
			t.Errorf("ServeStatus: %v", err)
		}
	})
	testenv.WaitFor(t, 10*time.Second, "the status address", func() bool {
		st, err := node.FetchStatus(ctx, sock)
		return err == nil && st.Cluster == "east"
	})
	return hub, src.ch, sock, &wg
}

// syncBuffer is a bytes.Buffer safe for a command writing while the test
// reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestObserveCommand(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	hub, flows, sock, wg := serveObserve(t, ctx)
	defer func() { cancel(); wg.Wait() }()
	for i := 1; i <= 4; i++ {
		flows <- obsFlow(i)
	}
	testenv.WaitFor(t, 10*time.Second, "4 flows", func() bool { return hub.Stats().Flows == 4 })

	ts := func(i int) string { return obsTime.Add(time.Duration(i) * time.Second).Format(time.StampMilli) }
	out, err := run(ctx, "observe", "--agent", sock, "--last", "2")
	if err != nil {
		t.Fatalf("observe: %v\n%s", err, out)
	}
	want := ts(3) + ": west/shop/frontend-1:41003 (ID:132000) -> east/shop/checkout-0:8080 (ID:70001) FORWARDED (TCP)\n" +
		ts(4) + ": west/shop/frontend-1:41004 (ID:132000) -> east/shop/checkout-0:8080 (ID:70001) policy-denied DROPPED (TCP)\n"
	if out != want {
		t.Errorf("observe --last 2:\n%s\nwant\n%s", out, want)
	}

	// Filters and JSON.
	out, err = run(ctx, "observe", "--agent", sock, "--verdict", "dropped", "--from-cluster", "west", "--to-pod", "shop/checkout", "-o", "json")
	if err != nil {
		t.Fatalf("observe -o json: %v\n%s", err, out)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ev observe.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Flow == nil {
			t.Fatalf("line %q: %v", line, err)
		}
		got = append(got, fmt.Sprintf("%d %s %s", ev.Flow.Source.Port, ev.Flow.Verdict, ev.Flow.DropReason))
	}
	if strings.Join(got, ",") != "41002 DROPPED policy-denied,41004 DROPPED policy-denied" {
		t.Errorf("observe --verdict dropped -o json: %v", got)
	}
	if out, err := run(ctx, "observe", "--agent", sock, "--to-cluster", "west"); err != nil || out != "" {
		t.Errorf("a filter matching nothing: %q, %v", out, err)
	}

	// Follow: the last flow, new ones as they come, until Ctrl-C.
	fctx, stop := context.WithCancel(ctx)
	var buf syncBuffer
	done := make(chan error, 1)
	go func() {
		root := NewRoot()
		root.SetArgs([]string{"--log-level", "error", "observe", "--agent", sock, "-f", "--last", "1", "--protocol", "TCP"})
		root.SetOut(&buf)
		root.SetErr(&buf)
		done <- root.ExecuteContext(fctx)
	}()
	testenv.WaitFor(t, 10*time.Second, "the follower", func() bool { return hub.Stats().Subscribers == 1 })
	flows <- obsFlow(5)
	testenv.WaitFor(t, 10*time.Second, "the followed flow", func() bool { return strings.Contains(buf.String(), ":41005 ") })
	if lines := strings.Split(strings.TrimSpace(buf.String()), "\n"); len(lines) != 2 || !strings.Contains(lines[0], ":41004 ") {
		t.Errorf("observe -f --last 1:\n%s", buf.String())
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("observe -f after Ctrl-C: %v", err)
	}
	testenv.WaitFor(t, 10*time.Second, "the follower to go", func() bool { return hub.Stats().Subscribers == 0 })

	// A follower ends, with an error, when the agent stops; the server
	// does not wait for it.
	go func() {
		_, err := run(context.Background(), "observe", "--agent", sock, "-f", "--last", "0")
		done <- err
	}()
	testenv.WaitFor(t, 10*time.Second, "the follower", func() bool { return hub.Stats().Subscribers == 1 })
	cancel()
	wg.Wait()
	if err := <-done; err == nil || !strings.Contains(err.Error(), "ended the stream") {
		t.Errorf("observe -f when the agent stops: %v", err)
	}
}

func TestObserveCommandErrors(t *testing.T) {
	ctx := context.Background()
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--verdict", "DROPED"}, `--verdict "DROPED": want FORWARDED or DROPPED`},
		{[]string{"--from-cluster", "West"}, `--from-cluster "West": not a cluster name`},
		{[]string{"--to-pod", "a/b/c"}, `--to-pod "a/b/c": want POD or NAMESPACE/POD`},
		{[]string{"--protocol", "http"}, `--protocol "http": want one of TCP, UDP, SCTP, ICMP, ICMPv6`},
		{[]string{"--identity", "x"}, `--identity "x": want a numeric security identity`},
		{[]string{"-o", "yaml"}, `-o "yaml": want compact or json`},
		{[]string{"--last", "-2"}, `--last -2: want a number of flows`},
		{nil, "cannot reach the agent at " + sock},
		{nil, "Point --agent at its --status-addr"},
	} {
		_, err := run(ctx, append([]string{"observe", "--agent", sock}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("observe %v: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
	out, err := run(ctx, "observe", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"--verdict", "--from-pod", "--follow", "--last", "EVENTS LOST", "clustermesh observe -f --verdict DROPPED"} {
		if !strings.Contains(out, s) {
			t.Errorf("observe --help lacks %q", s)
		}
	}
}

func TestObserveCompact(t *testing.T) {
	f := observe.Flow{
		Time: obsTime, Verdict: observe.VerdictForwarded, Protocol: "UDP", IsReply: true,
		Source:      observe.Endpoint{IP: "fd00::1", Port: 53, Identity: 2, Labels: []string{"reserved:world="}},
		Destination: observe.Endpoint{Cluster: "east", IP: "10.1.1.12", Port: 5353, Identity: 70002},
	}
	want := obsTime.Format(time.StampMilli) + ": east/10.1.1.12:5353 (ID:70002) <- [fd00::1]:53 (world) FORWARDED (UDP)"
	if got := f.Compact(); got != want {
		t.Errorf("compact:\n got %s\nwant %s", got, want)
	}
	var b bytes.Buffer
	observe.WriteCompact(&b, observe.Event{Lost: &observe.LostEvents{Source: observe.LostSubscriber, Count: 7}})
	if b.String() != "EVENTS LOST: 7 (this client read too slowly)\n" {
		t.Errorf("lost: %q", b.String())
	}
}
