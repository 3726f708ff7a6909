// Package corednstest runs real CoreDNS for tests: the binary
// tools/coredns/build.sh builds (`make coredns`: CoreDNS v1.15.0 with the
// bind, errors, log and kubernetes plugins) found through $COREDNS or the
// build's cache, started with a Corefile on a loopback port until the test
// ends, and asked either through a net.Resolver or, dig-like, one question
// at a time with the answer's response code and records (Query).
//
// When the binary is missing, tests skip, except under CI=true, where they
// fail: a DNS test must never silently skip there.
package corednstest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/portlock"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// Version is the CoreDNS tools/coredns/build.sh builds.
const Version = "v1.15.0"

// EnvBinary names the environment variable that points at the binary.
const EnvBinary = "COREDNS"

// startTimeout bounds CoreDNS's start. Its kubernetes plugin holds the
// server back until its informers synced, for up to 5 s (startup_timeout).
const startTimeout = 30 * time.Second

// tool is the CoreDNS tools/coredns/build.sh builds.
var tool = testenv.Tool{Env: EnvBinary, File: "coredns-" + Version, What: "CoreDNS binary",
	Build: "run `make coredns` (builds CoreDNS " + Version + " from the Go module proxy once, about a minute)"}

// DefaultBinary is where tools/coredns/build.sh puts the binary:
// $XDG_CACHE_HOME (or ~/.cache)/clustermesh/coredns-<Version>.
func DefaultBinary() string { return tool.DefaultPath() }

// Binary returns the CoreDNS to run: $COREDNS, else DefaultBinary; an error
// says how to build it when there is none.
func Binary() (string, error) { return tool.Path() }

// Require returns the CoreDNS binary, or skips t when there is none — fails
// it under CI=true.
func Require(t testing.TB) string { return tool.Require(t) }

// Server is a running CoreDNS.
type Server struct {
	Addr     string // 127.0.0.1:PORT, UDP and TCP
	Corefile string // the configuration it runs
	Log      string // path of its output
}

// Start runs CoreDNS with one server block for zones on a free loopback
// port: `bind 127.0.0.1`, `errors`, then plugins (the block's other lines,
// e.g. a kubernetes stanza). It returns once CoreDNS serves (it printed its
// banner) and stops it when t ends, printing its output if t failed.
func Start(t testing.TB, zones []string, plugins string) *Server {
	t.Helper()
	bin := Require(t)
	lease, err := portlock.Reserve()
	if err != nil {
		t.Fatalf("corednstest: a port for CoreDNS: %v", err)
	}
	t.Cleanup(lease.Release) // after CoreDNS stops: cleanups run last first
	port := strconv.Itoa(lease.Port)
	dir := t.TempDir()
	s := &Server{
		Addr:     net.JoinHostPort("127.0.0.1", port),
		Corefile: corefile(zones, port, plugins),
		Log:      filepath.Join(dir, "coredns.log"),
	}
	conf := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(conf, []byte(s.Corefile), 0o600); err != nil {
		t.Fatalf("corednstest: writing the Corefile: %v", err)
	}
	logf, err := os.Create(s.Log)
	if err != nil {
		t.Fatalf("corednstest: creating the log: %v", err)
	}
	out := &bannerWriter{f: logf, ready: make(chan struct{})}
	cmd := exec.Command(bin, "-conf", conf)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("corednstest: starting %s: %v", bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		logf.Close()
		if t.Failed() {
			t.Logf("CoreDNS log (%s):\n%s", s.Corefile, s.Output())
		}
	})
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case <-out.ready:
		return s
	case <-exited:
		t.Fatalf("corednstest: CoreDNS exited before serving (%v):\n%s", waitErr, s.Output())
	case <-timer.C:
		t.Fatalf("corednstest: CoreDNS not serving after %s:\n%s", startTimeout, s.Output())
	}
	return nil
}

// corefile is one server block for zones on port.
func corefile(zones []string, port, plugins string) string {
	var b strings.Builder
	for i, z := range zones {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s:%s", z, port)
	}
	b.WriteString(" {\n  bind 127.0.0.1\n  errors\n")
	for _, line := range strings.Split(strings.TrimSpace(plugins), "\n") {
		b.WriteString("  " + strings.TrimRight(line, " \t") + "\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// Output is what CoreDNS printed so far (its log plugin's lines, its
// errors, its kubernetes plugin's warnings).
func (s *Server) Output() string {
	b, err := os.ReadFile(s.Log)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", s.Log, err)
	}
	return string(b)
}

// bannerWriter copies CoreDNS's output to its log and closes ready once
// CoreDNS printed its version banner, which it does once every server
// block listens.
type bannerWriter struct {
	f     *os.File
	mu    sync.Mutex
	seen  []byte // output until the banner, to find it across writes
	ready chan struct{}
	done  bool
}

func (w *bannerWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.seen = append(w.seen, p...)
		if bytes.Contains(w.seen, []byte("CoreDNS-")) {
			w.done, w.seen = true, nil
			close(w.ready)
		}
	}
	return w.f.Write(p)
}
