package demo

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

func runOnce(t *testing.T, ebpf bool) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := Run(ctx, Options{Out: &out, Once: true, EBPF: ebpf, Dir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatalf("demo --once: %v", err)
	}
	for _, step := range []string{"ok   (a)", "ok   (b)", "ok   (c)", "ok   (d)", "all steps held"} {
		if !strings.Contains(out.String(), step) {
			t.Errorf("output lacks %q", step)
		}
	}
}

func TestDemoOnceInMemory(t *testing.T) { runOnce(t, false) }

func TestDemoOnceEBPF(t *testing.T) {
	testenv.RequireRoot(t)
	runOnce(t, true)
	if _, err := os.Stat("/sys/fs/bpf/clustermesh-localmesh"); err == nil {
		t.Error("the demo left pinned maps behind")
	}
}
