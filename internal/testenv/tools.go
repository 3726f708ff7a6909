package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Tool is a binary a build script of tools/ puts in the user's cache for
// the tests (kube-apiserver, CoreDNS, the hubble CLI): the environment
// variable Env names it, else it is File in $XDG_CACHE_HOME (or
// ~/.cache)/clustermesh.
type Tool struct {
	Env  string // e.g. KUBE_APISERVER
	File string // e.g. kube-apiserver-v1.37.1
	// Missing says what is missing and how to build it, for the error:
	// "no CoreDNS binary" ... "run `make coredns` (...)".
	What, Build string
}

// DefaultPath is where the build script puts the binary.
func (t Tool) DefaultPath() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "clustermesh", t.File)
}

// Path returns the binary to run: $Env, else DefaultPath; an error says
// how to build it when there is no executable file there.
func (t Tool) Path() (string, error) {
	p := os.Getenv(t.Env)
	if p == "" {
		p = t.DefaultPath()
	}
	if fi, err := os.Stat(p); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("no %s at %q: %s or set %s", t.What, p, t.Build, t.Env)
	}
	return p, nil
}

// Require returns the binary, or skips tb when there is none — fails it
// under CI=true, where a test against a real tool must never silently
// skip.
func (t Tool) Require(tb testing.TB) string {
	tb.Helper()
	p, err := t.Path()
	if err == nil {
		return p
	}
	if InCI() {
		tb.Fatal(err)
	}
	tb.Skip(err)
	return ""
}
