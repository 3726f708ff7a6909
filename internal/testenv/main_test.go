package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// leakEnv tells a child process of TestMainReportsLeaks what TestLeaky leaks.
const leakEnv = "TESTENV_LEAK"

func TestMain(m *testing.M) {
	switch os.Getenv(leakEnv) {
	case "":
		Main(m)
	case "known":
		settle = 100 * time.Millisecond
		Main(m, KnownGoroutineLeak("github.com/clustermesh/clustermesh/internal/testenv.leakyGoroutine", "a leak on purpose"))
	default:
		settle = 100 * time.Millisecond // the leaks are certain: no need to wait
		Main(m)
	}
}

var leakedFile *os.File // kept reachable: a collected *os.File closes itself

func leakyGoroutine(never chan struct{}) { <-never }

// TestLeaky leaks what TESTENV_LEAK names; TestMainReportsLeaks runs it in a
// child process.
func TestLeaky(t *testing.T) {
	switch os.Getenv(leakEnv) {
	case "":
		t.Skip("run by TestMainReportsLeaks")
	case "goroutine", "known":
		go leakyGoroutine(make(chan struct{}))
	case "fd":
		f, err := os.CreateTemp("", "leaky-fd-")
		if err != nil {
			t.Fatal(err)
		}
		leakedFile = f
	case "bpf":
		if err := os.Mkdir(os.Getenv("TESTENV_BPF_DIR"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMainReportsLeaks runs TestLeaky in child processes, each with a
// ledger of its own, and checks that Main fails each leaky run naming the
// leak (or only prints it, with KnownGoroutineLeak) and passes a clean one.
func TestMainReportsLeaks(t *testing.T) {
	bpfDir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("cm-testenv-%d", os.Getpid()))
	for _, c := range []struct {
		leak string
		code int
		want []string
	}{
		{"none", 0, nil},
		{"goroutine", 1, []string{"goroutines", "testenv.leakyGoroutine"}},
		{"fd", 1, []string{"file descriptors opened by the tests and never closed (1):", "leaky-fd-"}},
		{"known", 0, []string{"known leak, not failing the run: github.com/clustermesh/clustermesh/internal/testenv.leakyGoroutine (1 goroutines; TODO: a leak on purpose)"}},
		{"bpf", 1, []string{"outside the process, left by these tests", "bpf pins:\n  " + bpfDir}},
	} {
		t.Run(c.leak, func(t *testing.T) {
			if c.leak == "bpf" {
				RequireRoot(t)
				t.Cleanup(func() { os.Remove(bpfDir) })
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestLeaky$")
			cmd.Env = append(os.Environ(), leakEnv+"="+c.leak, "TMPDIR="+t.TempDir(), "TESTENV_BPF_DIR="+bpfDir)
			out, err := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != c.code {
				t.Fatalf("exit code %d (%v), want %d; output:\n%s", code, err, c.code, out)
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("the output does not say %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestKernelBPFFSEntriesAreNotPins mounts a bpffs as the first test on a
// fresh machine mounts /sys/fs/bpf: the entries the kernel creates in it
// are not counted as pins left behind; a directory a test makes is.
func TestKernelBPFFSEntriesAreNotPins(t *testing.T) {
	RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mounting a bpffs at %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 {
		t.Skip("this kernel creates no entries in a new bpffs (no bpf_preload)")
	}
	if pins := bpfPins(dir); len(pins) != 0 {
		t.Errorf("a new bpffs has pins %v, want none (the kernel's entries: %v)", pins, entries)
	}
	pin := filepath.Join(dir, "left-behind")
	if err := os.Mkdir(pin, 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(pin)
	if pins := bpfPins(dir); len(pins) != 1 || pins[0] != pin {
		t.Errorf("pins %v, want [%s]", pins, pin)
	}
}
