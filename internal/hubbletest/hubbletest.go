// Package hubbletest runs the real hubble CLI (Cilium's, unmodified) in
// tests: it finds the binary that `make hubble` (tools/hubble/build.sh)
// builds from the Go module proxy into a cache outside the repo, and runs it
// with a context, isolated from the machine's hubble configuration.
//
// Tests find the binary through $CLUSTERMESH_HUBBLE (the Makefile sets it),
// or at the cache's default path; when it is missing they skip, except under
// CI=true, where they fail.
//
//	hubble := hubbletest.Require(t)
//	out, err := hubble.Run(ctx, "observe", "--server", "unix://"+sock, "-o", "json", "--last", "5")
package hubbletest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// Version is the hubble CLI the tests run (tools/hubble/build.sh).
const Version = "v1.20.2"

// EnvBinary names the environment variable that points at the binary.
const EnvBinary = "CLUSTERMESH_HUBBLE"

// tool is the hubble CLI tools/hubble/build.sh builds.
var tool = testenv.Tool{Env: EnvBinary, File: "hubble-" + Version, What: "hubble CLI",
	Build: "run `make hubble` (builds Cilium's hubble " + Version + " from the Go module proxy once, 2 to 5 minutes)"}

// DefaultBinary is where tools/hubble/build.sh puts the binary:
// $XDG_CACHE_HOME (or ~/.cache)/clustermesh/hubble-<Version>.
func DefaultBinary() string { return tool.DefaultPath() }

// Binary returns the hubble CLI to run: $CLUSTERMESH_HUBBLE, else
// DefaultBinary; an error says how to build it when there is none.
func Binary() (string, error) { return tool.Path() }

// CLI is the hubble binary, run in a directory of its own with a home of
// its own, so that no config.yaml or HUBBLE_* variable of the machine
// changes what it does.
type CLI struct {
	Path string
	dir  string
}

// Require returns the hubble CLI, or skips t when there is none — fails it
// under CI=true, where a test of the real client must never silently skip.
func Require(t testing.TB) *CLI {
	t.Helper()
	return &CLI{Path: tool.Require(t), dir: t.TempDir()}
}

// Output is what one run printed.
type Output struct {
	Stdout, Stderr string
}

// Run runs `hubble args...` until it exits or ctx ends (then it is killed).
// An exit other than 0 is an error that quotes the command and its stderr;
// the output is returned either way.
func (c *CLI) Run(ctx context.Context, args ...string) (Output, error) {
	cmd := exec.CommandContext(ctx, c.Path, args...)
	cmd.Dir = c.dir
	cmd.Env = c.env()
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out := Output{Stdout: stdout.String(), Stderr: stderr.String()}
	if err != nil {
		return out, fmt.Errorf("running hubble %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.Stderr))
	}
	return out, nil
}

// env is the process's environment without HUBBLE_* and with a home (and
// config directory) in the CLI's own directory.
func (c *CLI) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "HUBBLE_") || k == "HOME" || k == "XDG_CONFIG_HOME" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+c.dir, "XDG_CONFIG_HOME="+filepath.Join(c.dir, ".config"))
}
