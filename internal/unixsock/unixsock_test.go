package unixsock_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/internal/unixsock"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// served: a client connects to path and reaches ln (its Accept returns).
func served(t *testing.T, path string, ln net.Listener) bool {
	t.Helper()
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		ln.Close()
		<-accepted
		return false
	}
	c.Close()
	return <-accepted == nil
}

// A second server on a live server's path fails with ErrInUse and leaves
// the first one serving; once the first closes, the path is free, and the
// socket and its lock file are gone.
func TestSecondServerRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "a.sock")
	first, err := unixsock.Listen(path, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %v, %v; want a socket with 0660", fi, err)
	}
	if _, err := unixsock.Listen(path, 0o660); !errors.Is(err, unixsock.ErrInUse) {
		t.Fatalf("second Listen: %v, want ErrInUse", err)
	}
	if !served(t, path, first) {
		t.Fatal("the first server lost its socket to the refused second one")
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + ".lock"} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s after Close: %v, want it gone", p, err)
		}
	}
	second, err := unixsock.Listen(path, 0o600)
	if err != nil {
		t.Fatalf("Listen after the first closed: %v", err)
	}
	defer second.Close()
	if !served(t, path, second) {
		t.Fatal("the second server does not serve")
	}
}

// A socket left by a server that died without removing it, or any other
// file at the path, is replaced when nobody holds the lock.
func TestStaleReplaced(t *testing.T) {
	dir := t.TempDir()
	dead := filepath.Join(dir, "dead.sock")
	ln, err := net.Listen("unix", dead)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	file := filepath.Join(dir, "file.sock")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{dead, file} {
		ln, err := unixsock.Listen(path, 0o600)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if !served(t, path, ln) {
			t.Errorf("%s: not served", path)
		}
		ln.Close()
	}
}

// A path whose directory cannot be created is an error naming it.
func TestUnwritableDirectory(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := unixsock.Listen(filepath.Join(file, "a.sock"), 0o600); err == nil || errors.Is(err, unixsock.ErrInUse) {
		t.Fatalf("Listen under a file: %v, want an error creating the directory", err)
	}
}
