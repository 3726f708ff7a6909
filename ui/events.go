package ui

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// refreshEvery is how often a page gets a snapshot of an unchanged map:
// its rates age.
const refreshEvery = 2 * time.Second

// serveEvents streams snapshots of the page's selection as server-sent
// events ("event: map"), one when the map changed, at most every
// Interval, until the page goes or the server stops.
func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request) {
	q, err := queryOf(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	s.metrics.pages.Inc()
	defer s.metrics.pages.Dec()
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	var sent uint64
	var sentAt time.Time
	for first := true; ; first = false {
		if v := s.m.Version(); first || v != sent || time.Since(sentAt) >= refreshEvery {
			snap := s.snapshot(q)
			b, err := json.Marshal(snap)
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(w, "event: map\ndata: %s\n\n", b); err != nil {
				return
			}
			fl.Flush()
			sent, sentAt = snap.Version, time.Now()
		}
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
}
