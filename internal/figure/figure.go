// Package figure prints the benchmark figures `make bench` reports: one line
// per figure, "FIGURE name value unit", which the Makefile strips to
// "name value unit". Figures are produced by tests named TestFigures, which
// run only when CLUSTERMESH_BENCH=1 (they take minutes and load the machine).
package figure

import (
	"fmt"
	"os"
	"strconv"
	"testing"
)

// Enabled reports whether figures are being measured (CLUSTERMESH_BENCH=1).
func Enabled() bool { return os.Getenv("CLUSTERMESH_BENCH") == "1" }

// Require skips t unless figures are being measured.
func Require(t testing.TB) {
	t.Helper()
	if !Enabled() {
		t.Skip("benchmark figures run with `make bench` (CLUSTERMESH_BENCH=1)")
	}
}

// Print reports one figure on stdout.
func Print(name string, value float64, unit string) {
	fmt.Printf("FIGURE %s %s %s\n", name, strconv.FormatFloat(value, 'f', -1, 64), unit)
}
