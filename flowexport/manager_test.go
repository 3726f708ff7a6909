package flowexport

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const twoExporters = `flowLogs:
- name: drops
  filePath: %[1]s/drops.log
  fieldMask: [time, verdict, drop_reason_desc, source.namespace, l4.TCP.destination_port]
  includeFilters:
  - verdict: [DROPPED]
- name: all-but-dns
  filePath: %[1]s/all.log
  excludeFilters:
  - destination_port: ["53"]
`

// TestExport writes flows through filters and a field mask and checks the
// JSON lines written.
func TestExport(t *testing.T) {
	dir := dirOf(t)
	cfg := filepath.Join(dir, "export.yaml")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, cfg, fmt.Sprintf(twoExporters, dir))
	r := start(t, cfg, time.Hour)
	r.waitStatus(t, "two exporters", func(st Status) bool { return len(st.Exporters) == 2 })

	r.src.send(flowResp(testFlow(flowpb.Verdict_FORWARDED, 8080)), flowResp(testFlow(flowpb.Verdict_DROPPED, 8080)),
		flowResp(testFlow(flowpb.Verdict_FORWARDED, 53)))
	r.waitStatus(t, "the flows written", func(st Status) bool { return st.written("drops") == 1 && st.written("all-but-dns") == 2 })
	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	drops := readLines(t, filepath.Join(dir, "drops.log"))
	if len(drops) != 1 {
		t.Fatalf("drops.log has %d lines, want 1", len(drops))
	}
	fl := drops[0]["flow"].(map[string]any)
	if keys := sortedKeys(fl); !slices.Equal(keys, []string{"drop_reason_desc", "l4", "source", "time", "verdict"}) {
		t.Errorf("masked flow has fields %q", keys)
	}
	if src := fl["source"].(map[string]any); len(src) != 1 || src["namespace"] != "shop" {
		t.Errorf("masked source = %v, want only namespace shop", src)
	}
	if got := fmt.Sprint(fl["l4"]); got != "map[TCP:map[destination_port:8080]]" {
		t.Errorf("masked l4 = %s", got)
	}
	if fl["verdict"] != "DROPPED" || fl["drop_reason_desc"] != "POLICY_DENIED" {
		t.Errorf("masked flow = %v", fl)
	}
	if drops[0]["node_name"] != "east/node-1" || drops[0]["time"] != "2026-11-21T03:00:00Z" {
		t.Errorf("line = %v, want node_name and time of the flow", drops[0])
	}

	all := readLines(t, filepath.Join(dir, "all.log"))
	if len(all) != 2 {
		t.Fatalf("all.log has %d lines, want 2 (the DNS flow excluded)", len(all))
	}
	for _, l := range all {
		f := l["flow"].(map[string]any)
		if port := f["l4"].(map[string]any)["TCP"].(map[string]any)["destination_port"]; port != float64(8080) {
			t.Errorf("all.log has a flow to port %v", port)
		}
		if f["source"].(map[string]any)["pod_name"] != "frontend-1" || f["IP"] == nil {
			t.Errorf("an unmasked flow lacks fields: %v", f)
		}
	}
	if got := r.metric(t, "clustermesh_flow_export_flows_total", "all-but-dns"); got != 2 {
		t.Errorf("flows_total{all-but-dns} = %v, want 2", got)
	}
}

// TestLostEvents: events the source dropped are counted per exporter, in
// status and metrics, and written as lost_events lines.
func TestLostEvents(t *testing.T) {
	dir := dirOf(t)
	cfg := filepath.Join(dir, "export.yaml")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, cfg, fmt.Sprintf(twoExporters, dir))
	r := start(t, cfg, time.Hour)
	r.waitStatus(t, "two exporters", func(st Status) bool { return len(st.Exporters) == 2 })

	lost := &observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_LostEvents{LostEvents: &flowpb.LostEvent{
		Source: flowpb.LostEventSource_OBSERVER_EVENTS_QUEUE, NumEventsLost: 7}},
		Time: timestamppb.New(time.Date(2026, 11, 21, 3, 0, 1, 0, time.UTC))}
	r.src.send(lost, flowResp(testFlow(flowpb.Verdict_DROPPED, 8080)), lost)
	st := r.waitStatus(t, "the lost events counted", func(st Status) bool {
		e, _ := st.exporter("drops")
		return e.LostEvents == 14 && e.FlowsWritten == 1
	})
	if e, _ := st.exporter("all-but-dns"); e.LostEvents != 14 {
		t.Errorf("all-but-dns lost %d, want 14", e.LostEvents)
	}
	if got := r.metric(t, "clustermesh_flow_export_lost_events_total", "drops"); got != 14 {
		t.Errorf("lost_events_total{drops} = %v, want 14", got)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, filepath.Join(dir, "drops.log"))
	if len(lines) != 3 || lines[0]["lost_events"] == nil || lines[1]["flow"] == nil || lines[2]["lost_events"] == nil {
		t.Fatalf("drops.log = %v, want lost_events, flow, lost_events", lines)
	}
	le := lines[0]["lost_events"].(map[string]any)
	if le["num_events_lost"] != "7" || le["source"] != "OBSERVER_EVENTS_QUEUE" || lines[0]["node_name"] != "east/node-1" ||
		lines[0]["time"] != "2026-11-21T03:00:01Z" {
		t.Errorf("lost_events line = %v", lines[0])
	}
}

func sortedKeys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// TestConfigChanges follows the file through a rename-over change, an
// invalid version, a removed exporter and the file's removal, notified by
// the file system only (the periodic check is an hour away).
func TestConfigChanges(t *testing.T) {
	dir := dirOf(t)
	cfg := filepath.Join(dir, "export.yaml")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	one := func(name, verdict string) string {
		return fmt.Sprintf("- name: %s\n  filePath: %s/%s.log\n  includeFilters: [{verdict: [%s]}]\n", name, dir, name, verdict)
	}
	writeConfig(t, cfg, "flowLogs:\n"+one("alpha", "DROPPED"))
	r := start(t, cfg, time.Hour)
	r.waitStatus(t, "exporter x", func(st Status) bool { return len(st.Exporters) == 1 })
	r.src.send(flowResp(testFlow(flowpb.Verdict_DROPPED, 1)))
	r.waitStatus(t, "a drop in x", func(st Status) bool { return st.written("alpha") == 1 })

	// Renamed over: x now takes forwarded flows (reopened, counts kept), y is new.
	writeConfig(t, cfg, "flowLogs:\n"+one("alpha", "FORWARDED")+one("beta", "DROPPED"))
	r.waitStatus(t, "x changed and y added", func(st Status) bool { return len(st.Exporters) == 2 })
	r.src.send(flowResp(testFlow(flowpb.Verdict_FORWARDED, 2)), flowResp(testFlow(flowpb.Verdict_DROPPED, 3)))
	r.waitStatus(t, "x and y written", func(st Status) bool { return st.written("alpha") == 2 && st.written("beta") == 1 })

	// Invalid: the last valid exporters keep running, and it is reported.
	writeConfig(t, cfg, "flowLogs:\n"+one("alpha", "FORWARDED")+"- name: alpha\n  filePath: /tmp/other.log\n")
	st := r.waitStatus(t, "the invalid config reported", func(st Status) bool { return st.ConfigError != "" })
	if !strings.Contains(st.ConfigError, `name "alpha" used twice`) || len(st.Exporters) != 2 {
		t.Errorf("status after an invalid config: %+v", st)
	}
	if v := r.metric(t, "clustermesh_flow_export_config_valid", ""); v != 0 {
		t.Errorf("config_valid = %v, want 0", v)
	}
	r.src.send(flowResp(testFlow(flowpb.Verdict_DROPPED, 4)))
	r.waitStatus(t, "y still written", func(st Status) bool { return st.written("beta") == 2 })

	// y removed (written in place this time): closed, no longer written.
	if err := os.WriteFile(cfg, []byte("flowLogs:\n"+one("alpha", "FORWARDED")), 0o600); err != nil {
		t.Fatal(err)
	}
	r.waitStatus(t, "y removed", func(st Status) bool { return len(st.Exporters) == 1 && st.ConfigError == "" })
	r.src.send(flowResp(testFlow(flowpb.Verdict_DROPPED, 5)), flowResp(testFlow(flowpb.Verdict_FORWARDED, 6)))
	r.waitStatus(t, "x written", func(st Status) bool { return st.written("alpha") == 3 })
	if n := len(readLines(t, filepath.Join(dir, "beta.log"))); n != 2 {
		t.Errorf("y.log has %d lines after y was removed, want 2", n)
	}
	if n := len(readLines(t, filepath.Join(dir, "alpha.log"))); n != 3 {
		t.Errorf("x.log has %d lines, want 3 (one drop, then two forwarded)", n)
	}

	// The file removed: no exporters.
	if err := os.Remove(cfg); err != nil {
		t.Fatal(err)
	}
	r.waitStatus(t, "no exporters", func(st Status) bool { return len(st.Exporters) == 0 })
}

// TestPeriodicCheck: a configuration directory that does not exist at
// start is found by the periodic check.
func TestPeriodicCheck(t *testing.T) {
	dir := dirOf(t)
	cfg := filepath.Join(dir, "conf", "export.yaml")
	r := start(t, cfg, 20*time.Millisecond)
	if err := os.MkdirAll(filepath.Dir(cfg), 0o750); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, cfg, fmt.Sprintf(twoExporters, dir))
	r.waitStatus(t, "the exporters found", func(st Status) bool { return len(st.Exporters) == 2 })
}

// TestRotation writes past fileMaxSizeMb and checks the rotated files: at
// most fileMaxBackups backups, every file under the size, every line whole.
func TestRotation(t *testing.T) {
	dir := dirOf(t)
	cfg := filepath.Join(dir, "export.yaml")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, cfg, fmt.Sprintf("flowLogs:\n- name: big\n  filePath: %s/logs/big.log\n  fileMaxSizeMb: 1\n  fileMaxBackups: 2\n", dir))
	r := start(t, cfg, time.Hour)
	r.waitStatus(t, "the exporter", func(st Status) bool { return len(st.Exporters) == 1 })
	f := testFlow(flowpb.Verdict_FORWARDED, 8080)
	for i := range 40 {
		f.Source.Labels = append(f.Source.Labels, fmt.Sprintf("k8s:label-%02d=%s", i, strings.Repeat("v", 16)))
	}
	const n = 4000 // about 1.5 KiB each: 6 MB through 1 MB files
	for range n {
		r.src.send(flowResp(f))
	}
	r.waitStatus(t, "every flow written", func(st Status) bool { return st.written("big") == n })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	files, err := os.ReadDir(filepath.Join(dir, "logs"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 {
		t.Fatalf("log directory has %d files, want big.log and 2 backups: %v", len(files), files)
	}
	for _, e := range files {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.Size() > 1<<20 {
			t.Errorf("%s is %d bytes, over 1 MiB", e.Name(), info.Size())
		}
		lines := readLines(t, filepath.Join(dir, "logs", e.Name()))
		if len(lines) == 0 {
			t.Errorf("%s is empty", e.Name())
		}
	}
}

// TestEnd: an exporter past its end writes nothing and says so.
func TestEnd(t *testing.T) {
	dir := dirOf(t)
	cfg := filepath.Join(dir, "export.yaml")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, cfg, fmt.Sprintf("flowLogs:\n- name: old\n  filePath: %s/old.log\n  end: \"2020-01-01T00:00:00Z\"\n- name: now\n  filePath: %s/now.log\n", dir, dir))
	r := start(t, cfg, time.Hour)
	r.src.send(flowResp(testFlow(flowpb.Verdict_FORWARDED, 1)))
	st := r.waitStatus(t, "the flow written by now", func(st Status) bool { return st.written("now") == 1 })
	if e, _ := st.exporter("old"); e.Active || e.FlowsWritten != 0 {
		t.Errorf("an ended exporter: %+v", e)
	}
}

// TestWriteErrors: a file that cannot be written is counted and reported,
// and the export goes on.
func TestWriteErrors(t *testing.T) {
	dir := dirOf(t)
	cfg := filepath.Join(dir, "export.yaml")
	if err := os.MkdirAll(filepath.Join(dir, "blocked"), 0o750); err != nil {
		t.Fatal(err)
	}
	// A directory where the file's directory should be: nothing can be created.
	if err := os.WriteFile(filepath.Join(dir, "blocked", "sub"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, cfg, fmt.Sprintf("flowLogs:\n- name: bad\n  filePath: %s/blocked/sub/bad.log\n- name: good\n  filePath: %s/good.log\n", dir, dir))
	r := start(t, cfg, time.Hour)
	r.src.send(flowResp(testFlow(flowpb.Verdict_FORWARDED, 1)))
	st := r.waitStatus(t, "the good one written, the bad one failing", func(st Status) bool {
		e, _ := st.exporter("bad")
		return st.written("good") == 1 && e.WriteErrors == 1
	})
	if e, _ := st.exporter("bad"); !strings.Contains(e.LastError, "bad.log") {
		t.Errorf("bad exporter's last error = %q", e.LastError)
	}
}

func TestNewNeedsPath(t *testing.T) {
	if _, err := New(Config{}); !errors.Is(err, ErrNoPath) {
		t.Fatalf("New without a path = %v", err)
	}
}

// TestConfigMapSwap: a Kubernetes ConfigMap volume updates its files by
// swapping the "..data" symlink, never touching the file's own name.
func TestConfigMapSwap(t *testing.T) {
	dir := dirOf(t)
	vol := filepath.Join(dir, "vol")
	version := func(n int, content string) {
		d := filepath.Join(vol, fmt.Sprintf("..2026_%d", n))
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "export.yaml"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(vol, "..data_tmp")
		if err := os.Symlink(filepath.Base(d), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(vol, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version(1, fmt.Sprintf("flowLogs:\n- name: one\n  filePath: %s/one.log\n", dir))
	cfg := filepath.Join(vol, "export.yaml")
	if err := os.Symlink(filepath.Join("..data", "export.yaml"), cfg); err != nil {
		t.Fatal(err)
	}
	r := start(t, cfg, time.Hour)
	r.waitStatus(t, "exporter one", func(st Status) bool { _, ok := st.exporter("one"); return ok })
	version(2, fmt.Sprintf("flowLogs:\n- name: two\n  filePath: %s/two.log\n", dir))
	r.waitStatus(t, "exporter two instead", func(st Status) bool {
		_, ok := st.exporter("two")
		return ok && len(st.Exporters) == 1
	})
}
