package flowexport

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// BenchmarkExport reports the cost of one flow written by two exporters:
// one with a filter and a field mask, one writing whole flows.
func BenchmarkExport(b *testing.B) {
	dir := b.TempDir()
	cfg := filepath.Join(dir, "export.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(twoExporters, dir)), 0o600); err != nil {
		b.Fatal(err)
	}
	m, err := New(Config{Path: cfg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	m.reload()
	defer m.closeAll()
	flows := []*flowpb.Flow{testFlow(flowpb.Verdict_FORWARDED, 8080), testFlow(flowpb.Verdict_DROPPED, 8080)}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := m.handle(flowResp(flows[i%2])); err != nil {
			b.Fatal(err)
		}
	}
}
