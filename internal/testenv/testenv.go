// Package testenv holds the one rule for tests that need privileges: they run
// for real as root, may skip without root on a developer's machine, and fail
// instead of skipping when CI=true.
package testenv

import (
	"os"
	"testing"
	"time"
)

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// RequireRoot skips t when the process is not root, unless CI=true, in which
// case the test fails: a privileged test must never silently skip in CI.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		t.Fatalf("this test needs root (eBPF, network namespaces); CI=true forbids skipping it: run the tests as root")
	}
	t.Skip("needs root (eBPF, network namespaces); skipped outside CI")
}

// WaitFor polls cond until it holds, failing t with what after timeout. It is
// the one way tests wait: on a condition with a deadline, never a bare sleep.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// Heavy marks a test that moves hundreds of thousands of entries: under the
// race detector it would take minutes, so there it skips, and `make test`
// runs every TestHeavy* test a second time without -race. Heavy tests must be
// named TestHeavy... so that the second run finds them.
func Heavy(t testing.TB) {
	t.Helper()
	if RaceEnabled {
		t.Skip("heavy test: `make test` runs it without -race (TestHeavy*)")
	}
}
