// Command archcheck checks the import rules of docs/architecture.md (kept in
// rules.go) on the module's packages, as `go list` sees them, and prints each
// import that breaks one at the file that has it. `make lint` runs it:
//
//	go run ./tools/archcheck [-C dir]
//
// It exits 1 if a rule is broken, 2 if the packages cannot be listed.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	dir := flag.String("C", ".", "the module's `directory`")
	flag.Parse()
	g, err := load(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "archcheck:", err)
		os.Exit(2)
	}
	violations, err := check(g, rules)
	if err != nil {
		fmt.Fprintln(os.Stderr, "archcheck:", err)
		os.Exit(2)
	}
	for _, v := range violations {
		fmt.Fprintln(os.Stderr, v)
	}
	if len(violations) > 0 {
		fmt.Fprintf(os.Stderr, "archcheck: %d imports break the rules of docs/architecture.md (tools/archcheck/rules.go)\n", len(violations))
		os.Exit(1)
	}
}
