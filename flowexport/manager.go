package flowexport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// DefaultCheckInterval is how often the configuration file is read even
// when no change was notified.
const DefaultCheckInterval = 10 * time.Second

// Config configures a Manager.
type Config struct {
	// Path is the configuration file (YAML or JSON, `flowLogs:` entries).
	// A missing file means no exporters.
	Path string
	// NodeName is written as node_name where an event has none.
	NodeName string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; nil: not registered.
	Registerer prometheus.Registerer
	// CheckInterval is how often the file is read besides notifications
	// (DefaultCheckInterval when 0).
	CheckInterval time.Duration
}

// Manager runs the exporters that the configuration file describes.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu        sync.Mutex
	exporters []*exporter // in the file's order
	read      bool        // the file was read at least once
	lastData  []byte      // the content last read (nil: absent)
	configErr string
	appliedAt time.Time
}

// New returns a Manager for cfg; Run reads the file and runs the exporters.
func New(cfg Config) (*Manager, error) {
	if cfg.Path == "" {
		return nil, ErrNoPath
	}
	cfg.Path = filepath.Clean(cfg.Path)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Manager{cfg: cfg, log: cfg.Logger.With("config", cfg.Path), metrics: m}, nil
}

// Run reads the configuration file, follows src and writes every event to
// the exporters until ctx is done, re-reading the file when it changes. It
// returns with every file flushed and closed: nil when ctx is done, or the
// source's error.
func (m *Manager) Run(ctx context.Context, src Source) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching flow export config %q: %w", m.cfg.Path, err)
	}
	// Watch before the first read, so that no change falls between them
	// (a change before the watching goroutine ran was missed until the
	// next periodic check).
	watching := m.addWatch(w)
	m.reload()
	watchCtx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		m.watch(watchCtx, w, watching)
	}()
	err = src.Follow(ctx, m.handle)
	stopWatch()
	wg.Wait()
	if cerr := w.Close(); cerr != nil {
		m.log.Warn("closing the flow export config watcher", "error", cerr)
	}
	m.closeAll()
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("following flows for export: %w", err)
	}
	return nil
}

// watch re-reads the file after a change in its directory (editors replace
// files by rename, Kubernetes swaps a ConfigMap's symlink) a settle period
// after the first event, and every CheckInterval. watching says whether
// the directory is watched already.
func (m *Manager) watch(ctx context.Context, w *fsnotify.Watcher, watching bool) {
	const settle = 50 * time.Millisecond
	tick := time.NewTicker(m.cfg.CheckInterval)
	defer tick.Stop()
	timer := time.NewTimer(settle)
	timer.Stop()
	defer timer.Stop()
	armed := false
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-w.Events:
			if !armed && m.concerns(ev) {
				timer.Reset(settle)
				armed = true
			}
		case err := <-w.Errors:
			m.log.Warn("watching the flow export config", "error", err)
		case <-timer.C:
			armed = false
			m.reload()
		case <-tick.C:
			if !watching {
				watching = m.addWatch(w)
			}
			m.reload()
		}
	}
}

// concerns reports whether a change in the directory may change the file:
// the file itself, or Kubernetes' "..data" symlink swap of a ConfigMap.
// Other files (flow logs written beside it) are not read for.
func (m *Manager) concerns(ev fsnotify.Event) bool {
	return filepath.Clean(ev.Name) == m.cfg.Path || strings.HasPrefix(filepath.Base(ev.Name), "..")
}

// addWatch watches the file's directory; a directory that does not exist
// yet is watched from the first periodic check that finds it.
func (m *Manager) addWatch(w *fsnotify.Watcher) bool {
	if err := w.Add(filepath.Dir(m.cfg.Path)); err != nil {
		m.log.Warn("cannot watch the flow export config's directory; reading it periodically", "error", err)
		return false
	}
	return true
}

// reload reads the file and, when its content changed, applies it or keeps
// the last valid exporters and reports why.
func (m *Manager) reload() {
	data, err := os.ReadFile(m.cfg.Path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		m.invalid(nil, fmt.Errorf("reading flow export config %q: %w", m.cfg.Path, err))
		return
	}
	if data == nil && err == nil {
		data = []byte{}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.read && bytes.Equal(data, m.lastData) && (data == nil) == (m.lastData == nil) {
		return
	}
	m.read, m.lastData = true, data
	specs, err := parseConfig(data)
	if err != nil {
		m.invalidLocked(err)
		return
	}
	m.apply(specs)
	m.configErr, m.appliedAt = "", time.Now()
	m.metrics.configValid.Set(1)
	m.metrics.reloads.WithLabelValues("applied").Inc()
	m.log.Info("flow export config applied", "exporters", len(m.exporters), "present", data != nil)
}

func (m *Manager) invalid(data []byte, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	// A file that could not be read is applied whatever it holds next.
	m.read, m.lastData = false, data
	m.invalidLocked(err)
}

func (m *Manager) invalidLocked(err error) {
	m.configErr = err.Error()
	m.metrics.configValid.Set(0)
	m.metrics.reloads.WithLabelValues("invalid").Inc()
	m.log.Error("flow export config not applied; the last valid exporters keep running", "error", err)
}

// apply closes the exporters no longer configured, reopens the changed
// ones (keeping their counts) and opens the new ones.
func (m *Manager) apply(specs []*spec) {
	old := map[string]*exporter{}
	for _, e := range m.exporters {
		old[e.spec.name] = e
	}
	next := make([]*exporter, 0, len(specs))
	for _, s := range specs {
		e, ok := old[s.name]
		delete(old, s.name)
		switch {
		case ok && e.spec.equal(s):
			next = append(next, e)
		case ok:
			m.closeExporter(e, "changed")
			next = append(next, openExporter(s, e.counts))
		default:
			m.log.Info("flow exporter opened", "exporter", s.name, "file", s.path)
			next = append(next, openExporter(s, counts{}))
		}
	}
	for _, e := range old {
		m.closeExporter(e, "removed")
		m.metrics.forget(e.spec.name)
	}
	m.exporters = next
	m.metrics.exporters.Set(float64(len(next)))
}

func (m *Manager) closeExporter(e *exporter, why string) {
	if err := e.close(); err != nil {
		m.log.Warn("closing a flow exporter", "exporter", e.spec.name, "error", err)
		return
	}
	m.log.Info("flow exporter closed", "exporter", e.spec.name, "why", why)
}

func (m *Manager) closeAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.exporters {
		m.closeExporter(e, "stopping")
	}
	m.exporters = nil
	m.metrics.exporters.Set(0)
}

// handle writes one event to every exporter it concerns. Write failures
// are counted and reported; they never stop the export.
func (m *Manager) handle(resp *observerpb.GetFlowsResponse) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	switch r := resp.GetResponseTypes().(type) {
	case *observerpb.GetFlowsResponse_Flow:
		m.handleFlow(resp, r.Flow, now)
	case *observerpb.GetFlowsResponse_LostEvents:
		m.handleLost(resp, r.LostEvents, now)
	}
	return nil
}

func (m *Manager) handleFlow(resp *observerpb.GetFlowsResponse, f *flowpb.Flow, now time.Time) {
	for _, e := range m.exporters {
		if f == nil || !e.active(now) || !e.spec.filter.Match(f) {
			continue
		}
		line, err := flowLine(e, resp, f, m.cfg.NodeName)
		if err == nil && e.writeLine(line) {
			e.counts.flows++
			m.metrics.flows.WithLabelValues(e.spec.name).Inc()
			continue
		}
		if err != nil {
			e.counts.writeErrors++
			e.lastErr = err.Error()
		}
		m.metrics.writeErrors.WithLabelValues(e.spec.name).Inc()
	}
}

// handleLost counts the events the source dropped for every active
// exporter (whether they would have matched is unknown) and writes the
// lost_events line, as Hubble's exporter does.
func (m *Manager) handleLost(resp *observerpb.GetFlowsResponse, lost *flowpb.LostEvent, now time.Time) {
	out := &observerpb.GetFlowsResponse{
		ResponseTypes: &observerpb.GetFlowsResponse_LostEvents{LostEvents: lost},
		NodeName:      firstNonEmpty(resp.GetNodeName(), m.cfg.NodeName),
		Time:          resp.GetTime(),
	}
	if out.Time == nil {
		out.Time = timestamppb.New(now)
	}
	line, err := marshalLine(out)
	for _, e := range m.exporters {
		if !e.active(now) {
			continue
		}
		e.counts.lost += lost.GetNumEventsLost()
		m.metrics.lost.WithLabelValues(e.spec.name).Add(float64(lost.GetNumEventsLost()))
		if err != nil {
			e.counts.writeErrors++
			e.lastErr = err.Error()
		}
		if err != nil || !e.writeLine(line) {
			m.metrics.writeErrors.WithLabelValues(e.spec.name).Inc()
		}
	}
}
