package statesource

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

func randomKey(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// syncBuffer is a log destination safe for the File's goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func keysOf(st *State) map[string]string {
	m := map[string]string{}
	for _, n := range st.Nodes {
		m[n.Name] = n.WireguardPubKey
	}
	return m
}

// A File with NodeKeysDir: a key file appears → its node gets the key; a
// rotation replaces it; a key for a node that has its own in the state file,
// or for an unknown node, changes nothing; an invalid key file is logged and
// ignored (the node keeps its last valid key) and never breaks the state; a
// removed key file drops the key. Every change arrives by inotify (the poll
// interval is an hour).
func TestNodeKeysDir(t *testing.T) {
	f := startKeysFile(t)
	f.expect("start, no key files", f.recv("start"), "")
	k1, k2, k3 := randomKey(t), randomKey(t), randomKey(t)
	f.writeKey("n1", k1)
	f.expect("n1's key file appeared", f.recv("key file"), k1)
	f.writeKey("n1", k2)
	f.expect("n1 rotated", f.recv("rotation"), k2)

	// No delivery for these: n2 keeps its state file key (with a warning)
	// and n9 is not a node of the state. The next delivery must be the
	// rotation that follows.
	f.writeKey("n2", randomKey(t))
	f.writeKey("n9", randomKey(t))
	f.writeKey("n1", k3)
	f.expect("n1 rotated again", f.recv("second rotation"), k3)
	if !strings.Contains(f.logs.String(), "another in the node keys directory") {
		t.Errorf("no warning about n2's two keys; logs:\n%s", f.logs.String())
	}

	// Invalid key files: ignored with a log line; n1 keeps k3. A change of
	// the state file meanwhile is delivered with it.
	for _, bad := range []string{"not a key\n", base64.StdEncoding.EncodeToString(make([]byte, 32)), strings.Repeat("A", 2000)} {
		if err := os.WriteFile(filepath.Join(f.keysDir, "n1.pub"), []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f.writeState("endpoints:\n- {namespace: a, pod: b, ip: 10.1.1.5, node: n1}\n")
	f.expect("state changed while n1's key file is invalid", f.recv("state change"), k3)
	// The File logs from its own goroutine, possibly after the delivery.
	testenv.WaitFor(t, 5*time.Second, "the invalid key file logged", func() bool {
		return strings.Count(f.logs.String(), "invalid node key file ignored") >= 1
	})
	if strings.Contains(f.logs.String(), "not a key") {
		t.Error("the log quotes the content of an invalid key file")
	}

	// The key file removed: n1 has no key any more.
	if err := os.Remove(filepath.Join(f.keysDir, "n1.pub")); err != nil {
		t.Fatal(err)
	}
	f.expect("n1's key file removed", f.recv("removal"), "")
	select {
	case s := <-f.states:
		t.Fatalf("an extra state was delivered: %v", keysOf(s))
	default:
	}
}

// keysFile is a running File whose state file gives n2 a key and whose
// node keys directory starts empty.
type keysFile struct {
	t                       *testing.T
	path, keysDir, stateKey string
	logs                    *syncBuffer
	states                  chan *State
}

// startKeysFile starts the File (polling every hour: changes must arrive
// by inotify) and stops it when t ends.
func startKeysFile(t *testing.T) *keysFile {
	dir := t.TempDir()
	f := &keysFile{
		t:        t,
		path:     filepath.Join(dir, "state.yaml"),
		keysDir:  filepath.Join(dir, "keys"), // created by the File
		stateKey: randomKey(t),
		logs:     &syncBuffer{},
		states:   make(chan *State, 10),
	}
	f.writeState("")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	file := &File{Path: f.path, NodeKeysDir: f.keysDir, PollInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(f.logs, nil))}
	go func() { done <- file.Run(ctx, func(s *State) { f.states <- s }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return f
}

// writeState replaces the state file (nodes n1 and n2, n2 with a key) and
// appends extra to it.
func (f *keysFile) writeState(extra string) {
	f.t.Helper()
	content := "nodes:\n- {name: n1, ips: [192.168.1.1], podCIDRs: [10.1.1.0/24]}\n" +
		"- {name: n2, ips: [192.168.1.2], wireguardPubKey: '" + f.stateKey + "'}\n" + extra
	if err := os.WriteFile(f.path+".tmp", []byte(content), 0o600); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Rename(f.path+".tmp", f.path); err != nil {
		f.t.Fatal(err)
	}
}

// recv is the nodes' keys of the next state delivered, which must be valid.
func (f *keysFile) recv(what string) map[string]string {
	f.t.Helper()
	select {
	case s := <-f.states:
		if err := s.Validate(); err != nil {
			f.t.Fatalf("%s: delivered an invalid state: %v", what, err)
		}
		return keysOf(s)
	case <-time.After(5 * time.Second):
		f.t.Fatalf("%s: no state delivered within 5s (the poll interval is an hour: inotify must deliver)", what)
		return nil
	}
}

// expect checks that n1 has key n1 and n2 its state file key.
func (f *keysFile) expect(what string, got map[string]string, n1 string) {
	f.t.Helper()
	if got["n1"] != n1 || got["n2"] != f.stateKey {
		f.t.Fatalf("%s: keys %v, want n1=%q and n2 with its state file key", what, got, n1)
	}
}

func (f *keysFile) writeKey(node, key string) {
	f.t.Helper()
	if err := WriteNodeKey(f.keysDir, node, key); err != nil {
		f.t.Fatal(err)
	}
}

// An invalid key file present at start does not fail the state: the node
// has no key, and the problem is logged.
func TestNodeKeysDirInvalidAtStart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.yaml")
	os.WriteFile(path, []byte(good), 0o600)
	os.WriteFile(filepath.Join(dir, "n1.pub"), []byte("garbage"), 0o644)
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan *State, 1)
	done := make(chan error, 1)
	// The keys directory may be the state file's own directory.
	f := &File{Path: path, NodeKeysDir: dir, PollInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	go func() {
		done <- f.Run(ctx, func(s *State) {
			select {
			case got <- s:
			default:
			}
		})
	}()
	select {
	case s := <-got:
		if k := keysOf(s)["n1"]; k != "" {
			t.Errorf("n1 got key %q from an invalid file", k)
		}
	case err := <-done:
		t.Fatalf("Run failed: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no state delivered")
	}
	if !strings.Contains(logs.String(), "invalid node key file ignored") || !strings.Contains(logs.String(), "n1.pub") {
		t.Errorf("the invalid file is not logged; logs:\n%s", logs.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}

func TestWriteNodeKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	key := randomKey(t)
	if err := WriteNodeKey(dir, "node-1", key); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "node-1.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %04o, want 0644", fi.Mode().Perm())
	}
	if got, err := ReadNodeKey(dir, "node-1"); err != nil || got != key {
		t.Errorf("ReadNodeKey: %q %v", got, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("files left in the directory: %v", entries)
	}
	for _, bad := range []string{"", "x", base64.StdEncoding.EncodeToString(make([]byte, 32)), base64.StdEncoding.EncodeToString(make([]byte, 31)) + "A"} {
		if err := WriteNodeKey(dir, "node-1", bad); err == nil {
			t.Errorf("WriteNodeKey accepted key %q", bad)
		}
	}
	for _, node := range []string{"", ".hidden", "a/b", "..", strings.Repeat("n", 300)} {
		if err := WriteNodeKey(dir, node, key); err == nil {
			t.Errorf("WriteNodeKey accepted node name %q", node)
		}
	}
	if got, _ := ReadNodeKey(dir, "node-1"); got != key {
		t.Errorf("a refused write changed the key: %q", got)
	}
}
