package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// TestMain runs the demo's client when the demo re-executes this binary as
// `demo.test demo client URL N` (as it re-executes clustermesh).
func TestMain(m *testing.M) {
	if os.Getenv(ClientEnv) != "" {
		os.Exit(clientMain(os.Args[1:]))
	}
	testenv.Main(m)
}

func clientMain(args []string) int {
	if len(args) != 4 || args[0] != "demo" || args[1] != "client" {
		fmt.Fprintf(os.Stderr, "demo client: unexpected arguments %q\n", args)
		return 2
	}
	n, err := strconv.Atoi(args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := RunClient(context.Background(), os.Stdout, args[2], n); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func runOnce(t *testing.T, ebpf bool) string {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := Run(ctx, Options{Out: &out, Once: true, EBPF: ebpf, Traffic: ebpf, Dir: t.TempDir(), Logger: discardLogger()})
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatalf("demo --once: %v", err)
	}
	steps := []string{"ok   (a)", "ok   (b)", "ok   (c)", "ok   (c2)", "ok   (d)", "ok   (e)", "ok   (f)", "all steps held"}
	if !ebpf {
		steps[1], steps[3] = "skip (b)", "skip (c2)"
	}
	for _, step := range steps {
		if !strings.Contains(out.String(), step) {
			t.Errorf("output lacks %q", step)
		}
	}
	return out.String()
}

func TestDemoOnceInMemory(t *testing.T) { runOnce(t, false) }

func TestDemoOnceEBPF(t *testing.T) {
	testenv.RequireRoot(t)
	out := runOnce(t, true)
	for _, phase := range []string{"east ready:", "east unready:", "east ready again:",
		"west/frontend-1 → 10.1.1.12:8080: answered", "(dropped)", "Policy denied DROPPED (TCP Flags: SYN)",
		"policy-verdict:L3-L4 INGRESS ALLOWED FORWARDED", "west/node-1 ", "north/node-1 ", "from-endpoint FORWARDED"} {
		if !strings.Contains(out, phase) {
			t.Errorf("output lacks the traffic phase %q", phase)
		}
	}
	checkNoPins(t)
	checkNoDemoCgroup(t)
}
