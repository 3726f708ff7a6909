package observe

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Path is where the agent serves the flows on its status address.
const Path = "/flows"

// DefaultLast is how many kept flows a request without last gets, as with
// hubble observe.
const DefaultLast = 20

// Handler serves GET Path: the flows matching the query's filter (the keys
// of FilterKeys), as NDJSON, one Event per line, flushed as they come.
// last=N sends the last N kept flows first (default 20, -1 all of them);
// follow=1 then streams new flows until the client goes away or Run
// returns. A bad query is answered 400 with the reason.
func (h *Hub) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "only GET is served", http.StatusMethodNotAllowed)
			return
		}
		f, last, follow, err := parseRequest(r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		sub := h.Subscribe(f, last, follow)
		defer sub.Close()
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		if err := rc.Flush(); err != nil {
			return
		}
		enc := json.NewEncoder(w)
		events := sub.Events()
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					return
				}
				if err := enc.Encode(ev); err != nil {
					slog.Debug("observe: client went away", "err", err)
					return
				}
				// Flush once nothing more is queued: every event leaves
				// without delay, a burst in few writes.
				if len(events) == 0 {
					if err := rc.Flush(); err != nil {
						return
					}
				}
			case <-r.Context().Done():
				return
			}
		}
	})
}

// parseRequest splits a query into the filter, last and follow.
func parseRequest(q url.Values) (Filter, int, bool, error) {
	q = cloneValues(q)
	last, follow := DefaultLast, false
	if vs, ok := q["last"]; ok {
		n, err := strconv.Atoi(lastValue(vs))
		if err != nil || n < -1 {
			return Filter{}, 0, false, fmt.Errorf("last %q: want a number of flows (-1: all kept)", lastValue(vs))
		}
		last = n
		delete(q, "last")
	}
	if vs, ok := q["follow"]; ok {
		b, err := strconv.ParseBool(lastValue(vs))
		if err != nil {
			return Filter{}, 0, false, fmt.Errorf("follow %q: want 1 or 0", lastValue(vs))
		}
		follow = b
		delete(q, "follow")
	}
	f, err := FilterFromQuery(q)
	return f, last, follow, err
}

func lastValue(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

func cloneValues(q url.Values) url.Values {
	out := make(url.Values, len(q))
	for k, v := range q {
		out[k] = v
	}
	return out
}

// RequestQuery is the query string of a request for f, last and follow.
func RequestQuery(f Filter, last int, follow bool) string {
	q := f.Query()
	q.Set("last", strconv.Itoa(last))
	if follow {
		q.Set("follow", "1")
	}
	return q.Encode()
}

// dialTimeout bounds connecting to the agent (not the stream).
const dialTimeout = 5 * time.Second

// ErrNotServed: the address answers, but serves no flows (an agent without
// flow observation, or that predates it).
var ErrNotServed = errors.New("no flows served")

// ErrUnreachable: nothing answers at the address (no agent there, or not
// yet listening).
var ErrUnreachable = errors.New("cannot reach the agent")

// Observe reads the flows matching f from the agent's status address addr
// (a unix socket path or host:port): the last kept ones (-1: all), then,
// with follow, new ones until ctx is done (it then returns ctx's error). It
// calls fn for every event, in order, and stops at fn's first error, which
// it returns.
func Observe(ctx context.Context, addr string, f Filter, last int, follow bool, fn func(Event) error) error {
	dialer := &net.Dialer{Timeout: dialTimeout}
	tr := &http.Transport{DisableCompression: true, DialContext: dialer.DialContext}
	u := "http://" + addr + Path
	if isUnix(addr) {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", addr)
		}
		u = "http://agent" + Path
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"?"+RequestQuery(f, last, follow), nil)
	if err != nil {
		return fmt.Errorf("reading flows from the agent at %s: %w", addr, err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w at %s: %w", ErrUnreachable, addr, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return fmt.Errorf("reading flows from the agent at %s: %w (it runs without flow observation, or predates it)", addr, ErrNotServed)
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("reading flows from the agent at %s: it answered %s: %s", addr, resp.Status, strings.TrimSpace(string(msg)))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		var ev Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return fmt.Errorf("reading flows from the agent at %s: an unreadable event: %w", addr, err)
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading flows from the agent at %s: %w", addr, err)
	}
	if follow {
		return fmt.Errorf("reading flows from the agent at %s: it ended the stream (stopping?)", addr)
	}
	return nil
}

// isUnix reports whether addr names a unix socket (a path) rather than
// host:port, as agentsync's status address does.
func isUnix(addr string) bool { return strings.HasPrefix(addr, "/") || strings.HasPrefix(addr, ".") }
