package datapath

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

func TestOpenUsesMapsAsRoot(t *testing.T) {
	testenv.RequireRoot(t)
	var logBuf bytes.Buffer
	cfg := smallConfig(testPinDir(t))
	dp, err := Open(cfg, slog.New(slog.NewTextHandler(&logBuf, nil)))
	mustNoErr(t, err)
	t.Cleanup(func() { dp.Close(); RemovePins(cfg.PinDir) })
	if dp.Kind() != "ebpf" || logBuf.Len() != 0 {
		t.Fatalf("Open as root: kind %q, log %q", dp.Kind(), logBuf.String())
	}
	// Errors other than permission are returned, not papered over.
	if _, err := Open(Config{PinDir: filepath.Join(t.TempDir(), "x")}, nil); err == nil {
		t.Fatal("Open with a pin dir outside bpffs succeeded")
	}
}

// TestOpenFallsBackWithoutPrivileges runs this test binary again as nobody:
// Open must warn loudly and return the in-memory datapath.
func TestOpenFallsBackWithoutPrivileges(t *testing.T) {
	testenv.RequireRoot(t)
	self, err := os.Executable()
	mustNoErr(t, err)
	dir, err := os.MkdirTemp("", "cm-datapath-")
	mustNoErr(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	mustNoErr(t, os.Chmod(dir, 0o755))
	bin := filepath.Join(dir, "datapath.test")
	copyFile(t, self, bin)

	pinDir := testPinDir(t)
	t.Cleanup(func() { RemovePins(pinDir) })
	cmd := exec.Command(bin, "-test.run=^TestOpenChild$", "-test.v")
	cmd.Env = append(os.Environ(), "CM_DATAPATH_OPEN_CHILD="+pinDir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	t.Logf("child output:\n%s", out)
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	for _, want := range []string{"level=WARN", "eBPF unavailable (not root?): using the in-memory datapath; nothing reaches the kernel", "KIND=memory"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("child output lacks %q", want)
		}
	}
}

func TestOpenChild(t *testing.T) {
	pinDir := os.Getenv("CM_DATAPATH_OPEN_CHILD")
	if pinDir == "" {
		t.Skip("run by TestOpenFallsBackWithoutPrivileges")
	}
	dp, err := Open(Config{PinDir: pinDir}, slog.New(slog.NewTextHandler(os.Stdout, nil)))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer dp.Close()
	mustNoErr(t, dp.UpsertService(fe("10.96.0.1:80", TCP), []Backend{be("10.1.0.1:80", 1)}))
	os.Stdout.WriteString("KIND=" + dp.Kind() + "\n")
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	mustNoErr(t, err)
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	mustNoErr(t, err)
	_, err = io.Copy(dst, src)
	mustNoErr(t, err)
	mustNoErr(t, dst.Close())
}
