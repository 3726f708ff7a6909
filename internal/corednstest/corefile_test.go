package corednstest

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCorefile(t *testing.T) {
	got := corefile([]string{"cluster.local", "clusterset.local"}, "5353", "kubernetes clusterset.local {\n    multicluster clusterset.local\n}\n")
	want := "cluster.local:5353 clusterset.local:5353 {\n  bind 127.0.0.1\n  errors\n  kubernetes clusterset.local {\n      multicluster clusterset.local\n  }\n}\n"
	if got != want {
		t.Errorf("corefile:\n%s\nwant:\n%s", got, want)
	}
}

// CoreDNS's banner is found when its output splits it across writes, and
// everything written reaches the log.
func TestBannerWriter(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := &bannerWriter{f: f, ready: make(chan struct{})}
	ready := func() bool {
		select {
		case <-w.ready:
			return true
		default:
			return false
		}
	}
	for i, p := range []string{".:53\nCore", "DNS", "-1.15.0\n", "linux/amd64\n"} {
		if _, err := w.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
		if want := i >= 2; ready() != want {
			t.Fatalf("after %q: ready %v, want %v", p, !want, want)
		}
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if want := ".:53\nCoreDNS-1.15.0\nlinux/amd64\n"; string(got) != want {
		t.Errorf("log %q, want %q", got, want)
	}
}
