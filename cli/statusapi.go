package cli

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

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/wireguard"
)

// AgentStatus is what `clustermesh agent` serves on --status-addr and
// `clustermesh status` shows: agentsync's status, with the same JSON fields
// as before, plus the WireGuard device's status under "wireguard" — absent
// when encryption is off (and from agents that predate it).
type AgentStatus struct {
	agentsync.Status
	WireGuard *wireguard.Status `json:"wireguard,omitempty"`
}

// isUnixAddr reports whether addr names a unix socket (a path) rather than
// host:port.
func isUnixAddr(addr string) bool {
	return strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, ".")
}

// serveStatus serves GET /status (JSON of status()) on addr until ctx is
// done: agentsync.ServeStatus, for the extended AgentStatus.
func serveStatus(ctx context.Context, addr string, status func() AgentStatus) error {
	network := "tcp"
	if isUnixAddr(addr) {
		network = "unix"
		if err := os.MkdirAll(filepath.Dir(addr), 0o755); err != nil {
			return fmt.Errorf("agent: status: %w", err)
		}
		os.Remove(addr) // a socket left by a previous run
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("agent: status: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(status()); err != nil {
			slog.Debug("status: client went away", "err", err)
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-done
		if network == "unix" {
			os.Remove(addr)
		}
		return nil
	case err := <-done:
		return fmt.Errorf("agent: status: %w", err)
	}
}

// fetchStatus reads an agent's status from addr.
func fetchStatus(ctx context.Context, addr string) (AgentStatus, error) {
	var st AgentStatus
	tr := &http.Transport{}
	url := "http://" + addr + "/status"
	if isUnixAddr(addr) {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}
		url = "http://agent/status"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return st, fmt.Errorf("status: %w", err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return st, fmt.Errorf("status: cannot reach the agent at %s: %w (is `clustermesh agent` running with --status-addr %s?)", addr, err, addr)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("status: agent at %s answered %s", addr, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("status: agent at %s sent an unreadable status: %w", addr, err)
	}
	return st, nil
}
