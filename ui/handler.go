package ui

import (
	"crypto/subtle"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/clustermesh/clustermesh/flowmap"
	"github.com/clustermesh/clustermesh/observe"
)

//go:embed web
var web embed.FS

// TokenCookie is the cookie a page opened with ?token= carries.
const TokenCookie = "clustermesh_ui_token"

// Handler serves the page, its API and /metrics, behind the access
// control.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(web, "web")
	mux.Handle("GET /", http.FileServerFS(static))
	mux.HandleFunc("GET /api/map", s.serveMap)
	mux.HandleFunc("GET /api/events", s.serveEvents)
	mux.HandleFunc("GET /api/flows", s.serveFlows)
	reg := prometheus.NewRegistry()
	reg.MustRegister(s.metrics)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return s.guard(mux)
}

// guard is the access control: with a token, every request carries it;
// without one, only loopback names may be the Host (a page of another
// site cannot reach the map through DNS rebinding). Every response has a
// strict content security policy: the page loads nothing but its own.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		if s.cfg.Token != "" {
			if !s.tokenOK(w, r) {
				return
			}
		} else if s.cfg.TLS == nil && !loopbackHost(r.Host) {
			s.metrics.denied.WithLabelValues("host").Inc()
			http.Error(w, "the UI answers to localhost, 127.0.0.1 and [::1] only", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// tokenOK checks the request's token (bearer, cookie or ?token=, which
// sets the cookie and redirects to the URL without it).
func (s *Server) tokenOK(w http.ResponseWriter, r *http.Request) bool {
	want := []byte(s.cfg.Token)
	same := func(v string) bool { return v != "" && subtle.ConstantTimeCompare([]byte(v), want) == 1 }
	if q := r.URL.Query().Get("token"); same(q) {
		http.SetCookie(w, &http.Cookie{Name: TokenCookie, Value: s.cfg.Token, Path: "/", HttpOnly: true,
			SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
		u := *r.URL
		v := u.Query()
		v.Del("token")
		u.RawQuery = v.Encode()
		http.Redirect(w, r, u.RequestURI(), http.StatusSeeOther)
		return false
	}
	if auth, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && same(auth) {
		return true
	}
	if c, err := r.Cookie(TokenCookie); err == nil && same(c.Value) {
		return true
	}
	s.metrics.denied.WithLabelValues("token").Inc()
	http.Error(w, "this UI needs its token: open it as /?token=TOKEN (clustermesh ui --token-file)", http.StatusUnauthorized)
	return false
}

// loopbackHost reports whether a Host header names this machine's
// loopback.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// queryOf parses a page's selection: cluster, namespace, verdict, window.
func queryOf(v url.Values) (flowmap.Query, error) {
	q := flowmap.Query{Cluster: v.Get("cluster"), Namespace: v.Get("namespace")}
	if s := v.Get("verdict"); s != "" {
		n, ok := flowpb.Verdict_value[strings.ToUpper(s)]
		if !ok {
			return q, fmt.Errorf("verdict %q: want one of Hubble's verdicts (FORWARDED, DROPPED, ...)", s)
		}
		q.Verdict = flowpb.Verdict(n)
	}
	if s := v.Get("window"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return q, fmt.Errorf("window %q: want a positive duration (30s, 5m)", s)
		}
		q.Window = d
	}
	return q, nil
}

// serveMap answers one snapshot as JSON.
func (s *Server) serveMap(w http.ResponseWriter, r *http.Request) {
	q, err := queryOf(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(s.snapshot(q)) //nolint:errcheck // the client went away
}

// pageSnapshot is a snapshot with the flow stream's state.
type pageSnapshot struct {
	flowmap.Snapshot
	Connected bool   `json:"connected"`
	Error     string `json:"error,omitempty"`
}

func (s *Server) snapshot(q flowmap.Query) pageSnapshot {
	up, msg := s.stream()
	return pageSnapshot{Snapshot: s.m.Snapshot(time.Now(), q), Connected: up, Error: msg}
}

// flowRow is one row of an edge's or node's flow list.
type flowRow struct {
	Time    time.Time `json:"time"`
	Verdict string    `json:"verdict"`
	Line    string    `json:"line"`
}

// serveFlows answers the last flows of an edge or a node, by ID, as
// compact lines.
func (s *Server) serveFlows(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	n := s.cfg.Rows
	if v, err := strconv.Atoi(r.URL.Query().Get("n")); err == nil && v > 0 {
		n = min(v, 1000)
	}
	fs, err := s.m.Flows(id, n)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	rows := make([]flowRow, 0, len(fs))
	for _, f := range fs {
		rows = append(rows, flowRow{Time: f.GetTime().AsTime(), Verdict: f.GetVerdict().String(), Line: observe.Compact(f)})
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"id": id, "flows": rows}) //nolint:errcheck // the client went away
}
