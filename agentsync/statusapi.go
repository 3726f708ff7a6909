package agentsync

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultStatusAddr is where an agent serves its status by default.
const DefaultStatusAddr = "/var/run/clustermesh/agent.sock"

// isUnix reports whether addr names a unix socket (a path) rather than
// host:port.
func isUnix(addr string) bool { return strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, ".") }

// ServeJSON serves GET /status (the JSON of status()) on addr — a unix socket
// path or host:port — until ctx is done. Callers that extend Status (the CLI
// adds WireGuard) serve their own value through it.
func ServeJSON(ctx context.Context, addr string, status func() any) error {
	return ServeJSONWith(ctx, addr, status, nil)
}

// ServeJSONWith is ServeJSON with more handlers on the same address: extra
// maps a ServeMux pattern ("/flows", "GET /flows") to its handler (the
// agent serves its flows this way, observe.Hub.Handler). Requests' contexts
// end when ctx does, so that streaming handlers stop with the server.
func ServeJSONWith(ctx context.Context, addr string, status func() any, extra map[string]http.Handler) error {
	network := "tcp"
	if isUnix(addr) {
		network = "unix"
		if err := os.MkdirAll(filepath.Dir(addr), 0o755); err != nil {
			return fmt.Errorf("agentsync: status: %w", err)
		}
		os.Remove(addr) // a socket left by a previous run
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(status()); err != nil {
			slog.Debug("status: client went away", "err", err)
		}
	})
	for pattern, h := range extra {
		if err := registerHandler(mux, pattern, h); err != nil {
			return err
		}
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("agentsync: status: listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close() // a handler that ignored its request's context
		}
		<-done
		if network == "unix" {
			os.Remove(addr)
		}
		return nil
	case err := <-done:
		return fmt.Errorf("agentsync: status: %w", err)
	}
}

// registerHandler adds h to mux, turning ServeMux's panic on a bad or
// conflicting pattern into an error.
func registerHandler(mux *http.ServeMux, pattern string, h http.Handler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("agentsync: status: handler %q: %v", pattern, r)
		}
	}()
	mux.Handle(pattern, h)
	return nil
}

// FetchJSON reads an agent's status from addr into v.
func FetchJSON(ctx context.Context, addr string, v any) error {
	tr := &http.Transport{}
	url := "http://" + addr + "/status"
	if isUnix(addr) {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}
		url = "http://agent/status"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("agentsync: status: %w", err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("agentsync: status: cannot reach the agent at %s: %w (is `clustermesh agent` running with --status-addr %s?)", addr, err, addr)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("agentsync: status: agent at %s answered %s", addr, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("agentsync: status: agent at %s sent an unreadable status: %w", addr, err)
	}
	return nil
}
