package statesource

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkFileChange: one endpoint changed in a state file of 100,000
// endpoints (or 200), near its start or near its end, from the rename of the new content into place to
// the State delivered (ns/change; ns/op also has the rename's own time:
// replacing a file of megabytes that nobody holds open frees its pages, in
// the writer's rename, in parallel with the source's work).
func BenchmarkFileChange(b *testing.B) {
	for _, n := range []int{200, 100000} {
		for _, at := range []string{"start", "end"} {
			b.Run(fmt.Sprintf("%d/%s", n, at), func(b *testing.B) { benchFileChange(b, n, at == "end") })
		}
	}
}

func benchFileChange(b *testing.B, n int, atEnd bool) {
	dir := b.TempDir()
	path := filepath.Join(dir, "state.json")
	base := indexedStateN(n)
	pod := `"pod":"pod-54"`
	if atEnd {
		pod = fmt.Sprintf(`"pod":"pod-%d"`, n-3)
	}
	edit := []byte(strings.Replace(string(base), pod, pod[:len(pod)-1]+`b"`, 1))
	if err := os.WriteFile(path, base, 0o600); err != nil {
		b.Fatal(err)
	}
	type delivery struct {
		st *State
		at time.Time
	}
	got := make(chan delivery, 1)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		(&File{Path: path, PollInterval: time.Hour, Logger: slog.New(slog.DiscardHandler)}).Run(ctx, func(st *State) { got <- delivery{st, time.Now()} })
	}()
	defer func() { cancel(); wg.Wait() }()
	<-got
	contents := [2][]byte{edit, base}
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		tmp := path + ".next"
		if err := os.WriteFile(tmp, contents[i%2], 0o600); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		if err := os.Rename(tmp, path); err != nil {
			b.Fatal(err)
		}
		d := <-got
		total += d.at.Sub(start)
		if d.st.Changes == nil {
			b.Fatal("parsed whole")
		}
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/change")
}

// BenchmarkCompareContent: finding where a 100,000-endpoint state file's
// new content (one endpoint changed near its end) differs from the last,
// through a read-only mapping of the file (what the parser does) or read
// into memory first.
func BenchmarkCompareContent(b *testing.B) {
	old := indexedStateN(100000)
	pod := `"pod":"pod-99997"`
	edit := []byte(strings.Replace(string(old), pod, pod[:len(pod)-1]+`b"`, 1))
	path := filepath.Join(b.TempDir(), "state.json")
	if err := os.WriteFile(path, edit, 0o600); err != nil {
		b.Fatal(err)
	}
	b.Run("mapped", func(b *testing.B) {
		for b.Loop() {
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			m, err := unix.Mmap(int(f.Fd()), 0, len(edit), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
			if err != nil {
				b.Fatal(err)
			}
			if commonPrefix(old, m) == len(old) {
				b.Fatal("no difference found")
			}
			unix.Munmap(m)
			f.Close()
		}
	})
	b.Run("read", func(b *testing.B) {
		buf := make([]byte, len(edit)+1)
		for b.Loop() {
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.ReadFull(f, buf[:len(edit)])
			if err != nil {
				b.Fatal(err)
			}
			if commonPrefix(old, buf[:n]) == len(old) {
				b.Fatal("no difference found")
			}
			f.Close()
		}
	})
}
