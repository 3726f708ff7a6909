package meshapiserver

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/wire"
)

// TestEtcdInternalsUnreachable: etcd's peer listener (raft, /members,
// /version) used to be plain HTTP on 127.0.0.1, where anyone on the host
// could send raft messages with rising terms until puts timed out and the
// apiserver ended. The only listener left on the network must be the
// client port, which answers no HTTP endpoint, not even to a mesh
// certificate; every other listener is a unix socket (0600, in a 0700
// directory) that another user cannot connect to. The store keeps serving.
func TestEtcdInternalsUnreachable(t *testing.T) {
	f := newFixture(t)
	rt, err := os.MkdirTemp("", "cmrt") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(rt)
	f.runtimeDir = filepath.Join(rt, "run")
	before := listeners(t)
	f.start(t, "127.0.0.1:0")
	clientAddr := strings.TrimPrefix(f.srv.ClientURL(), "https://")

	var internal []string // listeners other than the client port
	for l := range listeners(t) {
		if before[l] {
			continue
		}
		if l == "tcp:"+clientAddr {
			continue
		}
		internal = append(internal, l)
	}
	if len(internal) == 0 {
		t.Fatal("found no etcd listener but the client port: the test cannot see them")
	}
	for _, l := range internal {
		network, addr, _ := strings.Cut(l, ":")
		if network != "unix" {
			t.Errorf("etcd listens on %s %s besides its client port; /members: %q", network, addr, anonymousAnswer(network, addr, "/members"))
			continue
		}
		fi, err := os.Stat(addr)
		if err != nil {
			t.Errorf("%s: %v", addr, err)
			continue
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("socket %s has mode %o, want 0600", addr, fi.Mode().Perm())
		}
		di, err := os.Stat(filepath.Dir(addr))
		if err != nil || di.Mode().Perm() != 0o700 {
			t.Errorf("socket %s is in a directory of mode %v (%v), want 0700", addr, di.Mode().Perm(), err)
		}
	}

	// The client port: no HTTP endpoint for a client without certificate,
	// nor for one with a mesh certificate (remote-west).
	for _, path := range []string{"/members", "/version", "/raft", "/metrics", "/debug/vars", "/health"} {
		if a := anonymousAnswer("tcp", clientAddr, path); a != "" {
			t.Errorf("client port %s: %s", path, a)
		}
		if a := meshCertAnswer(t, f, clientAddr, path); a != "" {
			t.Errorf("client port %s to remote-west: %s", path, a)
		}
	}

	t.Run("as another user", func(t *testing.T) {
		testenv.RequireRoot(t)
		// As root the test itself can connect to anything: a child process
		// of uid 65534 tries.
		for target, answer := range dialAsNobody(t, append(internal, "tcp:"+clientAddr), []string{"/members", "/version", "/raft/probing", "/metrics"}) {
			t.Errorf("uid 65534 reached %s: %s", target, answer)
		}
	})

	// The store keeps serving: a change is published.
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	writeFile(t, f.state, strings.Replace(eastState, "- {namespace: shop, pod: cart-a, ip: 10.1.1.12, node: east-1, labels: {app: cart}}\n", "", 1))
	testenv.WaitFor(t, 10*time.Second, "a change published", func() bool {
		resp, err := get(t, admin, wire.IPCacheKey("10.1.1.12"))
		return err == nil && len(resp.Kvs) == 0
	})
}

// anonymousAnswer asks path on a listener, as a caller without
// certificate: plain HTTP on a unix socket; HTTP, then HTTPS trusting
// anything, on TCP. It returns what answered, "" when nothing did.
func anonymousAnswer(network, addr, path string) string {
	if network == "unix" {
		conn, err := net.DialTimeout("unix", addr, 3*time.Second)
		if err != nil {
			return ""
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: etcd\r\n\r\n", path)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return fmt.Sprintf("%s: %s", resp.Status, b)
	}
	for _, scheme := range []string{"http", "https"} {
		c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // an anonymous caller trusts anything
		}}
		resp, err := c.Get(scheme + "://" + addr + path)
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		resp.Body.Close()
		if resp.StatusCode < 400 {
			return fmt.Sprintf("%s answered %s: %s", scheme, resp.Status, b)
		}
	}
	return ""
}

// meshCertAnswer asks path on the client port over HTTPS with remote-west's
// certificate; "" when nothing answered.
func meshCertAnswer(t *testing.T, f *fixture, addr, path string) string {
	t.Helper()
	tlsCfg, err := ca.ClientTLSConfig(f.west.RemoteCert(), f.west.RemoteKey(), f.west.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	resp, err := c.Get("https://" + addr + path)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	if resp.StatusCode >= 400 {
		return ""
	}
	return fmt.Sprintf("answered %s: %s", resp.Status, b)
}

// listeners returns this process's listening TCP and unix sockets, as
// "tcp:host:port" and "unix:path".
func listeners(t *testing.T) map[string]bool {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	out := map[string]bool{}
	for _, file := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		for _, fields := range procLines(t, file) {
			if len(fields) < 10 || fields[3] != "0A" || !inodes[fields[9]] { // 0A: LISTEN
				continue
			}
			out["tcp:"+procAddr(t, fields[1])] = true
		}
	}
	for _, fields := range procLines(t, "/proc/self/net/unix") {
		// Num RefCount Protocol Flags Type St Inode Path; Flags 00010000: listening
		if len(fields) < 8 || fields[3] != "00010000" || !inodes[fields[6]] {
			continue
		}
		out["unix:"+fields[7]] = true
	}
	return out
}

func procLines(t *testing.T, path string) [][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][]string
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		out = append(out, strings.Fields(sc.Text()))
	}
	return out
}

// procAddr decodes an address of /proc/net/tcp{,6}: hex, in host order by
// 32-bit word, then the port.
func procAddr(t *testing.T, s string) string {
	t.Helper()
	h, p, _ := strings.Cut(s, ":")
	b, err := hex.DecodeString(h)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+4 <= len(b); i += 4 {
		binary.BigEndian.PutUint32(b[i:], binary.LittleEndian.Uint32(b[i:]))
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(a.Unmap(), uint16(port)).String()
}

// dialAsNobody runs this test binary as uid/gid 65534 to ask each path on
// each listener ("network:addr") as anonymousAnswer does; it returns what
// answered, by listener and path.
func dialAsNobody(t *testing.T, listeners, paths []string) map[string]string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "cm-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "helper.test")
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestDialHelper$")
	cmd.Env = []string{"CM_DIAL_LISTENERS=" + strings.Join(listeners, ","), "CM_DIAL_PATHS=" + strings.Join(paths, ",")}
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "HELPER DONE uid 65534") {
		t.Fatalf("helper as uid 65534: %v\n%s", err, out)
	}
	answers := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if a, ok := strings.CutPrefix(line, "ANSWER "); ok {
			target, answer, _ := strings.Cut(a, " ")
			answers[target] = answer
		}
	}
	return answers
}

// TestDialHelper is dialAsNobody's child; it does nothing in a normal run.
func TestDialHelper(t *testing.T) {
	ls := os.Getenv("CM_DIAL_LISTENERS")
	if ls == "" {
		t.Skip("only run by dialAsNobody")
	}
	for _, l := range strings.Split(ls, ",") {
		network, addr, _ := strings.Cut(l, ":")
		for _, path := range strings.Split(os.Getenv("CM_DIAL_PATHS"), ",") {
			if a := anonymousAnswer(network, addr, path); a != "" {
				fmt.Printf("ANSWER %s%s %q\n", l, path, a)
			}
		}
	}
	fmt.Printf("HELPER DONE uid %d\n", os.Getuid())
}
