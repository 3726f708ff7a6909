package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/flowmap"
)

// TestObserveMap runs `clustermesh observe map` against a hub served on a
// unix socket: the edges of obsFlow's cycle, by port and verdict, as JSON
// and DOT, narrowed by observe's filters.
func TestObserveMap(t *testing.T) {
	srv := serveUnix(t, 40)
	ctx := context.Background()
	window := []string{"--since", obsStart.Format(time.RFC3339), "--until", obsStart.Add(40 * time.Second).Format(time.RFC3339)}
	out, err := run(ctx, append([]string{"observe", "map", "--server", srv.addr, "-o", "json"}, window...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var s flowmap.Snapshot
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var got []string
	for _, e := range s.Edges {
		got = append(got, fmt.Sprintf("%s %d %v", e.ID, e.Flows, e.Verdicts))
	}
	want := []string{
		"east/shop/cart-0 -> east/shop/checkout-0 9090/TCP 10 map[FORWARDED:10]",
		"east/shop/checkout-0 -> east/bank/vault-0 443/TCP 10 map[AUDIT:10]",
		"west/shop/frontend-1 -> east/shop/cart-0 8080/TCP 10 map[FORWARDED:10]",
		"west/shop/frontend-1 -> east/shop/checkout-0 8080/TCP 10 map[DROPPED:10]",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("edges:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if s.Window != "40s" || len(s.Nodes) != 4 {
		t.Errorf("window %s, %d nodes: want 40s and 4", s.Window, len(s.Nodes))
	}

	out, err = run(ctx, append([]string{"observe", "map", "--server", srv.addr, "-o", "dot", "--to-namespace", "shop", "--verdict", "DROPPED"}, window...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, `"west/shop/frontend-1" -> "east/shop/checkout-0" [label="8080/TCP 0.25/s", color=red];`) || strings.Count(out, " -> ") != 1 {
		t.Errorf("dot of the drops into shop:\n%s", out)
	}
}

func TestObserveMapErrors(t *testing.T) {
	srv := serveUnix(t, 1)
	for _, c := range []struct{ args, want string }{
		{"-o yaml", `-o "yaml": want json or dot`},
		{"--until 1m", "--until needs --since"},
		{"--since 1m --until 2m", "the window is empty"},
	} {
		out, err := run(context.Background(), append([]string{"observe", "map", "--server", srv.addr}, strings.Fields(c.args)...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("observe map %s: %v (%s), want %q", c.args, err, out, c.want)
		}
	}
	out, err := run(context.Background(), "observe", "map", "--server", "unix:///nonexistent/hubble.sock")
	if err == nil || !strings.Contains(err.Error(), "observer unreachable") {
		t.Errorf("unreachable server: %v (%s)", err, out)
	}
}
