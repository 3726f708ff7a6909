package ciliumagent

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binEnv names the clustermesh binary the tests run; without it, TestMain
// builds one from the repository (two directories up).
const binEnv = "CLUSTERMESH_BIN"

// clustermeshBin is the binary every test runs, set by TestMain.
var clustermeshBin string

// buildBinary returns the binary named by $CLUSTERMESH_BIN, or builds
// cmd/clustermesh into dir.
func buildBinary(dir string) (string, error) {
	if p := os.Getenv(binEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s: %w", binEnv, err)
		}
		return p, nil
	}
	bin := filepath.Join(dir, "clustermesh")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/clustermesh")
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building cmd/clustermesh: %w\n%s", err, out)
	}
	return bin, nil
}

// run runs the clustermesh CLI once and fails t if it fails.
func run(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(clustermeshBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("clustermesh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// freeAddr returns a loopback address nothing listens on, so that an
// apiserver restarted on it is found at the same endpoint.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// diesWithTest makes a child process get SIGKILL when the test process
// dies (a test binary killed by its -timeout runs no cleanup).
func diesWithTest() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// apiserver is one `clustermesh apiserver` process. Its stderr is read by
// one goroutine, owned by the apiserver and waited for by stop.
type apiserver struct {
	cmd    *exec.Cmd
	url    string      // its client URL, once ready
	ready  chan string // the client URL, once logged
	exited chan struct{}
	mu     sync.Mutex
	log    strings.Builder
	err    error // of Wait, once exited is closed
}

var readyLine = regexp.MustCompile(`msg="mesh apiserver ready".* url=(\S+)`)

// startAPIServer starts `clustermesh apiserver args...` and waits until it
// logs that it is ready. It is stopped when t ends.
func startAPIServer(t *testing.T, args ...string) *apiserver {
	t.Helper()
	a := &apiserver{ready: make(chan string, 1), exited: make(chan struct{})}
	a.cmd = exec.Command(clustermeshBin, append([]string{"apiserver"}, args...)...)
	a.cmd.SysProcAttr = diesWithTest()
	stderr, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("starting the apiserver: %v", err)
	}
	go a.follow(stderr)
	t.Cleanup(func() {
		if err := a.stop(); err != nil {
			t.Errorf("apiserver: %v\n%s", err, a.output())
		}
	})
	select {
	case a.url = <-a.ready:
	case <-a.exited:
		t.Fatalf("apiserver exited before it was ready: %v\n%s", a.err, a.output())
	case <-time.After(60 * time.Second):
		t.Fatalf("apiserver not ready after 60s\n%s", a.output())
	}
	return a
}

// follow records the process's log and reports its ready line, then waits
// for the process.
func (a *apiserver) follow(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		a.mu.Lock()
		a.log.WriteString(line + "\n")
		a.mu.Unlock()
		if m := readyLine.FindStringSubmatch(line); m != nil {
			select {
			case a.ready <- m[1]:
			default:
			}
		}
	}
	a.err = a.cmd.Wait()
	close(a.exited)
}

func (a *apiserver) output() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.log.String()
}

// stop ends the process with SIGTERM, as an orchestrator does, and waits for
// it (killing it after 30s). Stopping a stopped apiserver does nothing.
func (a *apiserver) stop() error {
	select {
	case <-a.exited:
		return nil
	default:
	}
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling the apiserver: %w", err)
	}
	select {
	case <-a.exited:
	case <-time.After(30 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.exited
		return errors.New("apiserver did not stop within 30s of SIGTERM")
	}
	if a.err != nil {
		return fmt.Errorf("apiserver exit: %w", a.err)
	}
	return nil
}
