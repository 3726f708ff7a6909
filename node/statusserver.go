package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/clustermesh/clustermesh/internal/unixsock"
)

// DefaultStatusAddr is where an agent serves its status (and its flows) by
// default, and where `clustermesh status` and `observe` look for it.
const DefaultStatusAddr = "/var/run/clustermesh/agent.sock"

// isUnix reports whether addr names a unix socket (a path) rather than
// host:port.
func isUnix(addr string) bool { return strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, ".") }

// ServeStatus serves GET /status (the JSON of status()) on addr — a unix
// socket path or host:port — until ctx is done, with more handlers on the
// same address: handlers maps a ServeMux pattern ("GET /flows") to its
// handler (a node serves its flows this way, observe.Hub.Handler).
// Requests' contexts end when ctx does, so that streaming handlers stop
// with the server. A socket is removed when the server stops.
func ServeStatus(ctx context.Context, addr string, status func() any, handlers map[string]http.Handler) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(status()); err != nil {
			slog.Debug("status: client went away", "err", err)
		}
	})
	for pattern, h := range handlers {
		if err := registerHandler(mux, pattern, h); err != nil {
			return err
		}
	}
	ln, err := listenStatus(addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	err = serveUntilDone(ctx, srv, ln)
	if err != nil {
		return fmt.Errorf("serving status on %s: %w", addr, err)
	}
	return nil
}

// listenStatus listens on addr: a unix socket (0660) owned while served
// (a second agent on the path is refused), or host:port.
func listenStatus(addr string) (net.Listener, error) {
	if isUnix(addr) {
		ln, err := unixsock.Listen(addr, 0o660)
		if err != nil {
			return nil, fmt.Errorf("serving status: %w", err)
		}
		return ln, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for status requests on %s: %w", addr, err)
	}
	return ln, nil
}

// serveUntilDone serves ln until ctx is done, then shuts srv down (closing
// it when a handler ignores its request's context) and waits for it.
func serveUntilDone(ctx context.Context, srv *http.Server, ln net.Listener) error {
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
		<-done
		return nil
	case err := <-done:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}

// registerHandler adds h to mux, turning ServeMux's panic on a bad or
// conflicting pattern into an error.
func registerHandler(mux *http.ServeMux, pattern string, h http.Handler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("registering the status handler %q: %v", pattern, r)
		}
	}()
	mux.Handle(pattern, h)
	return nil
}

// FetchStatus reads a node agent's status from addr (a unix socket path or
// host:port); an agent without WireGuard or policy leaves those parts nil.
func FetchStatus(ctx context.Context, addr string) (Status, error) {
	var st Status
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	url := "http://" + addr + "/status"
	if isUnix(addr) {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}
		url = "http://agent/status"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return st, fmt.Errorf("asking %s for the status: %w", addr, err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return st, fmt.Errorf("cannot reach the agent at %s: %w (is `clustermesh agent` running with --status-addr %s?)", addr, err, addr)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("reading the status: the agent at %s answered %s", addr, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("reading the status: the agent at %s sent an unreadable status: %w", addr, err)
	}
	return st, nil
}
