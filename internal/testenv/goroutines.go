package testenv

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"go.uber.org/goleak"
)

// goroutinesBefore records the goroutines alive before the tests: started
// by package initialisation (klog's flush daemon, for one), they live as
// long as the process whatever the tests do.
func goroutinesBefore() goleak.Option { return goleak.IgnoreCurrent() }

// leakedGoroutines returns the goroutines alive after the tests that were not
// before them, waiting until deadline for the ones that are ending. The known
// leaks are printed, not returned. goleak itself ignores the runtime's
// goroutines, the testing package's and os/signal's.
func leakedGoroutines(before goleak.Option, known []knownLeak, deadline time.Time) []string {
	opts := []goleak.Option{before}
	for _, k := range known {
		opts = append(opts, goleak.IgnoreAnyFunction(k.function))
	}
	var leaks []string
	for {
		// Find itself retries for about a second and a half.
		err := goleak.Find(opts...)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			leaks = []string{"goroutines (each was started by a test, or by what a test ran, and still runs): " + err.Error()}
			break
		}
	}
	if len(known) > 0 {
		buf := make([]byte, 1<<20)
		for {
			if n := runtime.Stack(buf, true); n < len(buf) {
				buf = buf[:n]
				break
			}
			buf = make([]byte, 2*len(buf))
		}
		for _, k := range known {
			if n := strings.Count(string(buf), "\n"+k.function+"("); n > 0 {
				fmt.Fprintf(os.Stderr, "testenv: known leak, not failing the run: %s (%d goroutines; TODO: %s)\n", k.function, n, k.todo)
			}
		}
	}
	return leaks
}
