package statesource

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
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
	// NodeKeysDir, when set, is a directory of the nodes' WireGuard public
	// keys, one file <node>.pub each (written by the nodes' agents with
	// WriteNodeKey): a node of the state without a wireguardPubKey gets the
	// key of its file. It is created if missing and watched like the state
	// file; a key file that is invalid is logged and ignored (its node keeps
	// its last valid key) and never fails the state.
	NodeKeysDir string
	Logger      *slog.Logger
}

// LoadFile reads, parses and validates a state file.
func LoadFile(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading state file %q: %w", path, err)
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
			return nil, fmt.Errorf("parsing state file %q: %w", name, err)
		}
	} else if err := yaml.UnmarshalStrict(b, &st); err != nil {
		return nil, fmt.Errorf("parsing state file %q: %w", name, err)
	}
	if err := st.Validate(); err != nil {
		return nil, fmt.Errorf("checking state file %q: %w", name, err)
	}
	st.applyNamespaceLabels()
	return &st, nil
}

// Run delivers the file's state, then every valid change (of the file, or of
// the keys in NodeKeysDir), until ctx is done. It fails at once if the file
// cannot be read or is invalid at start, or NodeKeysDir cannot be created.
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
	var keys *nodeKeys
	var keysChanged <-chan struct{}
	if f.NodeKeysDir != "" {
		if keys, err = newNodeKeys(f.NodeKeysDir, log); err != nil {
			cancel()
			return err
		}
		var waitKeys func()
		keysChanged, waitKeys, err = notifyKeysDir(ctx, f.NodeKeysDir)
		if err != nil {
			log.Warn("no change notifications for the node keys directory: polling only", "dir", f.NodeKeysDir, "every", every, "err", err)
		} else {
			defer waitKeys()
		}
	}
	defer cancel()
	p := &parser{name: f.Path}
	b, err := os.ReadFile(f.Path)
	if err != nil {
		return fmt.Errorf("reading state file %q: %w", f.Path, err)
	}
	base, err := p.parse(b)
	if err != nil {
		return err
	}
	keys.load()
	st, applied := keys.apply(base)
	onChange(st)
	lastStat, _ := os.Stat(f.Path)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		stateWake, notified, keysWake, keysNotified := false, false, false, false
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			stateWake, keysWake = true, keys != nil
		case <-changed:
			stateWake, notified = true, true
		case <-keysChanged:
			keysWake, keysNotified = true, true
		}
		var next *State
		if stateWake {
			next = f.reread(log, p, notified, &lastStat)
		}
		// A poll reads the key files only if their stats changed; a
		// notification always reads them.
		keysMoved := keysWake && (keysNotified || keys.signature() != keys.sig) && keys.load()
		switch {
		case next != nil:
			base = next
			var now map[string]string
			if st, now = keys.apply(base); st.Changes != nil && !maps.Equal(now, applied) {
				st = withChanges(st, &Changes{Endpoints: st.Changes.Endpoints,
					RemovedEndpoints: st.Changes.RemovedEndpoints, Nodes: true})
			}
			applied = now
			onChange(st)
			p.settle()
		case keysMoved:
			var now map[string]string
			if st, now = keys.apply(base); !maps.Equal(now, applied) {
				applied = now
				onChange(withChanges(st, &Changes{Nodes: true}))
			}
		}
	}
}

// reread returns the state file's new state, or nil when it is unchanged,
// unreadable or invalid (logged: the last state stays in force).
func (f *File) reread(log *slog.Logger, p *parser, notified bool, lastStat *os.FileInfo) *State {
	fi, err := os.Stat(f.Path)
	if err != nil {
		log.Warn("state file unreadable, keeping the last state", "file", f.Path, "err", err)
		return nil
	}
	// A poll skips an unchanged file; a notification always reads, since
	// two quick writes can share an mtime tick, a size and an inode.
	if !notified && sameFile(fi, *lastStat) {
		return nil
	}
	*lastStat = fi
	st, err := p.next(f.Path)
	var unreadable *os.PathError
	switch {
	case errors.As(err, &unreadable):
		log.Warn("state file unreadable, keeping the last state", "file", f.Path, "err", err)
	case err != nil:
		log.Error("state file changed but is invalid, keeping the last state", "file", f.Path, "err", err)
	}
	return st
}

// withChanges is a copy of st with c as its Changes.
func withChanges(st *State, c *Changes) *State {
	cp := *st
	cp.Changes = c
	return &cp
}

// parser parses the successive contents of one state file: a JSON file
// around its difference with the last content when only endpoints changed
// (jsonindex.go; a large one compared through a mapping, mapped_linux.go),
// anything else whole.
type parser struct {
	name string
	idx  *jsonIndex // the last valid JSON content, when indexable
	last []byte     // the last content read, valid or not (nil: not kept)
	// pending, when set, rebuilds idx's content (idx.data is nil until
	// settle): it was compared through a mapping.
	pending *rebase
	// MapMin is the size from which a new content is compared through a
	// mapping (DefaultMapMin when zero).
	MapMin int
}

func (p *parser) mapMin() int {
	if p.MapMin > 0 {
		return p.MapMin
	}
	return DefaultMapMin
}

// next parses the file's new content: nil and no error when it is the same
// as the last content read. Through a mapping when it can, else read.
func (p *parser) next(path string) (*State, error) {
	p.settle()
	if st, handled := p.parseMapped(path); handled {
		return st, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return p.parse(b)
}

// settle rebuilds the content a mapping's parse left pending, in place of
// the last one (jsonindex.go, rebase). Called once the State is delivered.
func (p *parser) settle() {
	if p.pending == nil {
		return
	}
	p.idx.data = p.pending.inPlace()
	p.last, p.pending = p.idx.data, nil
}

// parse parses b, the content read after the last: nil and no error when
// it is the same as the last content read (valid: nothing changed;
// invalid: it is still, and was logged) or the last valid one.
func (p *parser) parse(b []byte) (*State, error) {
	if p.last != nil && bytes.Equal(b, p.last) {
		return nil, nil
	}
	p.last = b
	if p.idx != nil {
		nx, err := p.idx.update(b)
		switch {
		case err == nil:
			p.idx = nx
			return nx.state, nil
		case errors.Is(err, errUnchanged):
			return nil, nil
		}
		// A failed update left the old index as it was: it stays in
		// force until replaced below.
	}
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		idx, st, err := indexJSON(p.name, b)
		if err != nil {
			return nil, err
		}
		p.idx = idx
		return st, nil
	}
	st, err := Parse(p.name, b)
	if err != nil {
		return nil, err
	}
	p.idx = nil
	return st, nil
}

func sameFile(a, b os.FileInfo) bool {
	return b != nil && a.ModTime().Equal(b.ModTime()) && a.Size() == b.Size() && os.SameFile(a, b)
}
