package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
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

	"github.com/clustermesh/clustermesh/ca"
)

// buildClustermesh builds cmd/clustermesh into a directory of t's.
func buildClustermesh(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "clustermesh")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/clustermesh/clustermesh/cmd/clustermesh")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// apiserverProcess is a `clustermesh apiserver` process.
type apiserverProcess struct {
	cmd  *exec.Cmd
	url  string
	exit chan error
}

var readyURL = regexp.MustCompile(`mesh apiserver ready.*url=(https://\S+)`)

// startAPIServerProcess starts `bin apiserver` with TMPDIR set to tmp and
// waits until it is ready.
func startAPIServerProcess(t *testing.T, bin, tmp string, args ...string) *apiserverProcess {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"apiserver"}, args...)...)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &apiserverProcess{cmd: cmd, exit: make(chan error, 1)}
	ready := make(chan string, 1)
	var logMu sync.Mutex
	var log strings.Builder
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logMu.Lock()
			log.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			if m := readyURL.FindStringSubmatch(sc.Text()); m != nil {
				ready <- m[1]
			}
		}
		io.Copy(io.Discard, stderr)
		p.exit <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.exit
		}
	})
	select {
	case p.url = <-ready:
		return p
	case err := <-p.exit:
		p.exit <- err
		logMu.Lock()
		defer logMu.Unlock()
		t.Fatalf("apiserver exited before ready: %v\n%s", err, log.String())
	case <-time.After(60 * time.Second):
		logMu.Lock()
		defer logMu.Unlock()
		t.Fatalf("apiserver not ready after 60s:\n%s", log.String())
	}
	return nil
}

// etcdDataDirs returns the etcd data directories under root (those that
// hold a member directory).
func etcdDataDirs(t *testing.T, root string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == "member" {
			out[filepath.Dir(path)] = true
			return filepath.SkipDir
		}
		return nil
	})
	return out
}

// leftovers returns every file (not directory) under root, with its size.
func leftovers(root string) []string {
	var out []string
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			fi, _ := d.Info()
			out = append(out, fmt.Sprintf("%s (%d bytes)", path, fi.Size()))
		}
		return nil
	})
	return out
}

// TestAPIServerKilledLeavesNothingBehind: a `clustermesh apiserver` killed
// with SIGKILL cannot remove its etcd data (120–140 MB per run used to pile
// up in /tmp); the next start removes it, and a graceful stop leaves
// nothing.
func TestAPIServerKilledLeavesNothingBehind(t *testing.T) {
	dir := t.TempDir()
	tmp, err := os.MkdirTemp("", "cmk") // TMPDIR of the processes; short for unix socket paths
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	mesh, err := ca.New("clustermesh test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mesh.IssueBundle(filepath.Join(dir, "east"), "east", []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "east.yaml")
	if err := os.WriteFile(state, []byte("nodes:\n- {name: east-1, ips: [192.168.1.1]}\nendpoints:\n- {namespace: shop, pod: a, ip: 10.1.1.10, node: east-1, labels: {app: a}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--cluster-name", "east", "--cluster-id", "1", "--cert-dir", filepath.Join(dir, "east"),
		"--state-file", state, "--listen", "127.0.0.1:0", "--metrics-addr", ""}

	bin := buildClustermesh(t)
	first := startAPIServerProcess(t, bin, tmp, args...)
	firstData := etcdDataDirs(t, tmp)
	if len(firstData) != 1 {
		t.Fatalf("etcd data directories under TMPDIR: %v, want the first apiserver's", firstData)
	}
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-first.exit
	for d := range firstData {
		if _, err := os.Stat(d); err != nil {
			t.Fatalf("the killed apiserver's data %s: %v (the test expects it left behind)", d, err)
		}
	}

	second := startAPIServerProcess(t, bin, tmp, args...)
	for d := range firstData {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("the killed apiserver's data %s is still there after the next start", d)
		}
	}
	if n := len(etcdDataDirs(t, tmp)); n != 1 {
		t.Errorf("%d etcd data directories while the second runs, want its own", n)
	}
	if err := second.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-second.exit:
		if err != nil {
			t.Errorf("second apiserver on SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("second apiserver did not stop on SIGTERM")
	}
	if left := leftovers(tmp); len(left) > 0 {
		t.Errorf("left behind in TMPDIR:\n%s", strings.Join(left, "\n"))
	}
}

// TestAPIServerMetricsLoopbackByDefault: the metrics have no
// authentication, so they listen on loopback unless asked otherwise, and
// the help says so.
func TestAPIServerMetricsLoopbackByDefault(t *testing.T) {
	f := newAPIServerCmd().Flags().Lookup("metrics-addr")
	host, _, err := net.SplitHostPort(f.DefValue)
	if err != nil || !net.ParseIP(host).IsLoopback() {
		t.Errorf("--metrics-addr defaults to %q, want a loopback address", f.DefValue)
	}
	out, err := run(context.Background(), "apiserver", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"127.0.0.1:9963", "without authentication"} {
		if !strings.Contains(out, want) {
			t.Errorf("apiserver --help does not say %q:\n%s", want, out)
		}
	}
}

// TestAPIServerBadStateFileFailsBeforeListening: `clustermesh apiserver`
// with a state file that is missing or invalid prints one line, `error:`
// and what it was doing with which file, no package names stacked in front,
// and exits 1 before anything listened: the --listen and --metrics-addr
// addresses, held by the test, were never tried (that would fail with
// another error) and no runtime directory was created under TMPDIR.
func TestAPIServerBadStateFileFailsBeforeListening(t *testing.T) {
	dir := t.TempDir()
	mesh, err := ca.New("clustermesh test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mesh.IssueBundle(filepath.Join(dir, "east"), "east", []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.yaml")
	invalid := filepath.Join(dir, "invalid.yaml")
	if err := os.WriteFile(invalid, []byte("nodes:\n- {name: east-1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := buildClustermesh(t)
	for name, tc := range map[string]struct {
		file string
		want *regexp.Regexp
	}{
		"missing": {missing, regexp.MustCompile(`^error: reading state file "` + regexp.QuoteMeta(missing) + `": open ` + regexp.QuoteMeta(missing) + `: no such file or directory\n$`)},
		"invalid": {invalid, regexp.MustCompile(`^error: checking state file "` + regexp.QuoteMeta(invalid) + `": invalid state: node "east-1": no ips .*\n$`)},
	} {
		t.Run(name, func(t *testing.T) {
			var held []string
			for range 2 {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				held = append(held, ln.Addr().String())
			}
			tmp := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "apiserver", "--cluster-name", "east", "--cluster-id", "1",
				"--cert-dir", filepath.Join(dir, "east"), "--state-file", tc.file, "--listen", held[0], "--metrics-addr", held[1])
			cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("apiserver: %v, want exit status 1\n%s", err, stderr.String())
			}
			if !tc.want.MatchString(stderr.String()) {
				t.Errorf("stderr:\n%s\nwant one line matching %s", stderr.String(), tc.want)
			}
			for _, pkg := range []string{"apiserver:", "meshapiserver:", "statesource:"} {
				if strings.Contains(stderr.String(), pkg) {
					t.Errorf("stderr names the package %q instead of what was done:\n%s", pkg, stderr.String())
				}
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout: %q, want nothing", stdout.String())
			}
			if entries, _ := os.ReadDir(tmp); len(entries) > 0 {
				t.Errorf("TMPDIR holds %v: a runtime directory was created", entries)
			}
		})
	}
}
