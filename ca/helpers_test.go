package ca

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sentinels are the errors Verify may wrap; a Verify error wraps exactly one.
var sentinels = []error{ErrExpired, ErrNotYetValid, ErrUnknownAuthority, ErrWrongUsage, ErrRejected, ErrInvalidRequest}

func newTestCA(t *testing.T, cn string) *CA {
	t.Helper()
	c, err := New(cn, 24*time.Hour)
	if err != nil {
		t.Fatalf("New(%q): %v", cn, err)
	}
	return c
}

func issue(t *testing.T, c *CA, r Request) *Issued {
	t.Helper()
	is, err := c.Issue(r)
	if err != nil {
		t.Fatalf("Issue(%+v): %v", r, err)
	}
	return is
}

// save writes is to dir as name.crt/name.key and returns both paths.
func save(t *testing.T, is *Issued, dir, name string) (certFile, keyFile string) {
	t.Helper()
	if err := is.Save(dir, name); err != nil {
		t.Fatalf("Save(%s, %s): %v", dir, name, err)
	}
	return filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
}

// saveCA writes c's certificate to dir/ca.crt and returns the path.
func saveCA(t *testing.T, c *CA, dir string) string {
	t.Helper()
	if err := c.Save(dir); err != nil {
		t.Fatalf("CA.Save(%s): %v", dir, err)
	}
	return filepath.Join(dir, CertFile)
}

// checkErr fails unless err wraps want and, when want is one of the Verify
// sentinels, no other one; and unless its message contains every hint.
func checkErr(t *testing.T, err, want error, hints ...string) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if !errors.Is(err, want) {
		t.Fatalf("error %v, want one wrapping %q", err, want)
	}
	for _, s := range sentinels {
		if s != want && errors.Is(err, s) {
			t.Errorf("error %v also wraps %q, want only %q", err, s, want)
		}
	}
	msg := err.Error()
	if strings.HasPrefix(msg, "ca:") || strings.HasPrefix(msg, "verify") {
		t.Errorf("error %q starts with a package or function name, not what was done", msg)
	}
	for _, h := range hints {
		if !strings.Contains(msg, h) {
			t.Errorf("error %q does not mention %q", msg, h)
		}
	}
}
