package cli

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/flowmap"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/ui"
)

// TestUICommand runs `clustermesh ui` against a hub on a unix socket: it
// prints the page's address, serves the map of the hub's flows, and ends
// with its context.
func TestUICommand(t *testing.T) {
	srv := serveUnix(t, 8)
	var out syncBuffer
	root := NewRoot()
	root.SetArgs([]string{"--log-level", "error", "ui", "--server", srv.addr, "--listen", "127.0.0.1:0", "--window", "87600h"})
	root.SetOut(&out)
	root.SetErr(&out)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	addr := regexp.MustCompile(`http://127\.0\.0\.1:\d+/`)
	testenv.WaitFor(t, 10*time.Second, "the page's address", func() bool { return addr.MatchString(out.String()) })
	page := addr.FindString(out.String())
	var s flowmap.Snapshot
	testenv.WaitFor(t, 10*time.Second, "the hub's four edges in the map", func() bool {
		resp, err := http.Get(page + "api/map")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(&s) == nil && len(s.Edges) == 4
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("ui after its context ended: %v\n%s", err, out.String())
	}
}

func TestUICommandGuards(t *testing.T) {
	srv := serveUnix(t, 1)
	short := filepath.Join(t.TempDir(), "short.token")
	if err := os.WriteFile(short, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args string
		want string
	}{
		{"--listen 0.0.0.0:0", ui.ErrUnguarded.Error()},
		{"--token-file " + short, "shorter than 16 characters"},
		{"--web-tls-cert-file x.crt", "together"},
	} {
		out, err := run(context.Background(), append([]string{"ui", "--server", srv.addr}, strings.Fields(c.args)...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ui %s: %v (%s), want %q", c.args, err, out, c.want)
		}
		if c.want == ui.ErrUnguarded.Error() && !errors.Is(err, ui.ErrUnguarded) {
			t.Errorf("ui %s: %v does not wrap ErrUnguarded", c.args, err)
		}
	}
}
