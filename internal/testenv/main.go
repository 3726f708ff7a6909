package testenv

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// Main runs m's tests and exits. Every package's TestMain calls it:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
//
// When the tests pass, it then fails the run (exit 1, naming what is left) if
// they left behind goroutines (goroutines.go), open file descriptors (fds.go),
// or bpf pins under /sys/fs/bpf, network namespaces under /run/netns or cgroups
// (global.go): a test cleans up what it made, and a component's Run or Close
// waits for what it started.
func Main(m *testing.M, opts ...Option) {
	os.Exit(run(m, opts...))
}

// Option changes what Main checks.
type Option func(*config)

type config struct {
	known []knownLeak
}

// knownLeak is a leak of a package's own code, reported to its owner.
type knownLeak struct{ function, todo string }

// KnownGoroutineLeak makes Main print, without failing the run, the
// goroutines that have function ("pkg.Func.func1", as a stack names it) in
// their stack: a leak already reported, in code the package's owner has yet
// to fix. todo names it. Every other leak still fails the run.
func KnownGoroutineLeak(function, todo string) Option {
	return func(c *config) { c.known = append(c.known, knownLeak{function, todo}) }
}

// settle bounds how long the checks wait for goroutines to end and
// descriptors to close once the tests are done (a closed connection's
// goroutines finish shortly after Close returns; under -race on a loaded
// machine that can take a few seconds).
var settle = 10 * time.Second

func run(m *testing.M, opts ...Option) int {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	// The flags say whether this is a fuzzing run; m.Run parses them too.
	if !flag.Parsed() {
		flag.Parse()
	}
	if fuzzing() {
		// The fuzzing engine's coordinator and workers are not a test run.
		return m.Run()
	}
	global := joinGlobal() // first: its descriptor stays open until the end
	startGoroutines := goroutinesBefore()
	startFDs := openFDs()

	code := m.Run()

	var leaks []string
	if code == 0 {
		leaks = append(leaks, leakedGoroutines(startGoroutines, cfg.known, time.Now().Add(settle))...)
		leaks = append(leaks, leakedFDs(startFDs, time.Now().Add(settle))...)
	}
	// Leave even when the tests failed, so that the runs that come next have
	// a baseline of their own.
	leaks = append(leaks, global.leave(code == 0)...)
	if len(leaks) == 0 {
		return code
	}
	fmt.Fprintln(os.Stderr, "testenv: the tests left behind:\n"+strings.Join(leaks, "\n"))
	fmt.Println("FAIL: leaks (see above)") // on stdout too, beside go test's own verdict
	return 1
}

func fuzzing() bool {
	for _, name := range []string{"test.fuzz", "test.fuzzworker"} {
		if f := flag.Lookup(name); f != nil && f.Value.String() != "" && f.Value.String() != "false" {
			return true
		}
	}
	return false
}
