package statesource

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"time"

	"sigs.k8s.io/yaml"
)

// DefaultPollInterval is how often a File checks its file for changes when
// no change notification arrives (inotify normally reports a change at once).
const DefaultPollInterval = time.Second

// File is a Source backed by a YAML file (the format of State, see
// docs/state-file.md). It re-reads the file when its directory reports a
// change (inotify) or, as a safety net, every PollInterval; a
// change that does not parse or validate is logged and ignored, so the last
// good state stays in force.
type File struct {
	Path         string
	PollInterval time.Duration // DefaultPollInterval when zero
	Logger       *slog.Logger
}

// LoadFile reads, parses and validates a state file.
func LoadFile(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("statesource: %w", err)
	}
	return Parse(path, b)
}

// Parse parses and validates a state in YAML or JSON (JSON, a subset of
// YAML, takes a faster path: large generated states use it); name labels
// errors. Unknown fields are errors, so a typo is not silently ignored.
func Parse(name string, b []byte) (*State, error) {
	var st State
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&st); err != nil {
			return nil, fmt.Errorf("statesource: %s: %w", name, err)
		}
	} else if err := yaml.UnmarshalStrict(b, &st); err != nil {
		return nil, fmt.Errorf("statesource: %s: %w", name, err)
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("statesource: %s: %w", name, err)
	}
	return &st, nil
}

// Run delivers the file's state, then every valid change, until ctx is done.
// It fails at once if the file cannot be read or is invalid at start.
func (f *File) Run(ctx context.Context, onChange func(*State)) error {
	log := f.Logger
	if log == nil {
		log = slog.Default()
	}
	every := f.PollInterval
	if every <= 0 {
		every = DefaultPollInterval
	}
	// Watch before the first read, so that no change falls between them.
	ctx, cancel := context.WithCancel(ctx)
	changed, wait, err := notifyFile(ctx, f.Path)
	if err != nil {
		log.Warn("no change notifications for the state file: polling only", "file", f.Path, "every", every, "err", err)
	} else {
		defer wait() // after cancel (defers run in reverse)
	}
	defer cancel()
	last, err := os.ReadFile(f.Path)
	if err != nil {
		return fmt.Errorf("statesource: %w", err)
	}
	st, err := Parse(f.Path, last)
	if err != nil {
		return err
	}
	onChange(st)
	lastStat, _ := os.Stat(f.Path)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		notified := false
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-changed:
			notified = true
		}
		fi, err := os.Stat(f.Path)
		if err != nil {
			log.Warn("state file unreadable, keeping the last state", "file", f.Path, "err", err)
			continue
		}
		// A poll skips an unchanged file; a notification always reads, since
		// two quick writes can share an mtime tick, a size and an inode.
		if !notified && sameFile(fi, lastStat) {
			continue
		}
		lastStat = fi
		b, err := os.ReadFile(f.Path)
		if err != nil || bytes.Equal(b, last) {
			continue
		}
		last = b
		st, err := Parse(f.Path, b)
		if err != nil {
			log.Error("state file changed but is invalid, keeping the last state", "file", f.Path, "err", err)
			continue
		}
		onChange(st)
	}
}

func sameFile(a, b os.FileInfo) bool {
	return b != nil && a.ModTime().Equal(b.ModTime()) && a.Size() == b.Size() && os.SameFile(a, b)
}
