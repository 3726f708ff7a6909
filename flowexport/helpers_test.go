package flowexport

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// testSource is a Source the test feeds: each follower has its own queue.
type testSource struct {
	mu        sync.Mutex
	followers []chan *observerpb.GetFlowsResponse
}

func (s *testSource) Follow(ctx context.Context, fn func(*observerpb.GetFlowsResponse) error) error {
	ch := make(chan *observerpb.GetFlowsResponse, 65536)
	s.mu.Lock()
	s.followers = append(s.followers, ch)
	s.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-ch:
			if err := fn(r); err != nil {
				return err
			}
		}
	}
}

func (s *testSource) following() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.followers) > 0
}

func (s *testSource) send(rs ...*observerpb.GetFlowsResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range s.followers {
		for _, r := range rs {
			ch <- r
		}
	}
}

// running is a Manager running on a testSource, stopped by the test's end.
type running struct {
	m    *Manager
	src  *testSource
	reg  *prometheus.Registry
	stop func() error
}

func start(t *testing.T, path string, interval time.Duration) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := New(Config{Path: path, NodeName: "east/node-1", Registerer: reg, CheckInterval: interval,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	src := &testSource{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, src) }()
	r := &running{m: m, src: src, reg: reg}
	var once sync.Once
	var runErr error
	r.stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() { _ = r.stop() })
	testenv.WaitFor(t, 5*time.Second, "the manager to follow the source", src.following)
	return r
}

// waitStatus waits until cond holds of the manager's status.
func (r *running) waitStatus(t *testing.T, what string, cond func(Status) bool) Status {
	t.Helper()
	var st Status
	testenv.WaitFor(t, 10*time.Second, what, func() bool { st = r.m.Status(); return cond(st) })
	return st
}

func (st Status) exporter(name string) (ExporterStatus, bool) {
	for _, e := range st.Exporters {
		if e.Name == name {
			return e, true
		}
	}
	return ExporterStatus{}, false
}

func (st Status) written(name string) uint64 {
	e, _ := st.exporter(name)
	return e.FlowsWritten
}

// writeConfig replaces path by rename, as editors and atomic writers do.
func writeConfig(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// readLines parses a JSON-lines file.
func readLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("%s: line %q is not JSON: %v", path, sc.Text(), err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func flowResp(f *flowpb.Flow) *observerpb.GetFlowsResponse {
	return &observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: f},
		NodeName: f.GetNodeName(), Time: f.GetTime()}
}

func testFlow(verdict flowpb.Verdict, dport uint32) *flowpb.Flow {
	f := &flowpb.Flow{
		Time:     timestamppb.New(time.Date(2026, 11, 21, 3, 0, 0, 0, time.UTC)),
		Uuid:     "u-" + verdict.String(),
		NodeName: "east/node-1",
		Verdict:  verdict,
		IP:       &flowpb.IP{Source: "10.1.2.3", Destination: "10.2.0.5", IpVersion: flowpb.IPVersion_IPv4},
		L4: &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 41234, DestinationPort: dport,
			Flags: &flowpb.TCPFlags{SYN: true}}}},
		Source: &flowpb.Endpoint{ClusterName: "west", Namespace: "shop", PodName: "frontend-1", Identity: 132000,
			Labels: []string{"k8s:app=frontend"}},
		Destination: &flowpb.Endpoint{ClusterName: "east", Namespace: "shop", PodName: "checkout-0", Identity: 70001,
			Labels: []string{"k8s:app=checkout"}},
	}
	if verdict == flowpb.Verdict_DROPPED {
		f.DropReasonDesc = flowpb.DropReason_POLICY_DENIED
	}
	return f
}

func dirOf(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "export")
}

// metric reads a metric from the registry the manager registered on: by
// name and, when exporter is not empty, its exporter label.
func (r *running) metric(t *testing.T, name, exporter string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if exporter != "" && (len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != exporter) {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s{exporter=%q} registered", name, exporter)
	return 0
}
