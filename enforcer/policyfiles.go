package enforcer

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/clustermesh/clustermesh/policy"
)

// policyFiles reads a policy directory. The whole directory is one set:
// it is compiled only as a whole, so that a typo in one file never leaves
// the node enforcing half of an edit.
type policyFiles struct {
	dir  string
	opts policy.Options

	names []string          // files of the last read, sorted
	sig   [sha256.Size]byte // names and contents of the last read
	read  bool              // at least one read happened
}

// load reads the directory. changed reports whether its files differ from
// the last read (a directory that does not change is not compiled again);
// err is the reason the changed set cannot be used.
func (p *policyFiles) load() (c *policy.Compiled, changed bool, err error) {
	if p.dir == "" {
		return nil, false, nil
	}
	names, contents, err := p.readDir()
	h := sha256.New()
	if err != nil {
		h.Write([]byte(err.Error()))
	}
	for i, n := range names {
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(contents[i]))
		h.Write(contents[i])
	}
	var sig [sha256.Size]byte
	h.Sum(sig[:0])
	if p.read && sig == p.sig {
		return nil, false, nil
	}
	p.read, p.sig, p.names = true, sig, names
	if err != nil {
		return nil, true, err
	}
	c = &policy.Compiled{}
	for i, n := range names {
		one, err := policy.Parse(p.opts, n, contents[i])
		if err != nil {
			return nil, true, err
		}
		c.Merge(one)
	}
	if err := policy.CheckL7Conflicts(c); err != nil {
		return nil, true, fmt.Errorf("policy directory %s: %w", p.dir, err)
	}
	return c, true, nil
}

// readDir returns the policy files of the directory (*.yaml, *.yml,
// *.json; hidden files skipped) and their contents.
func (p *policyFiles) readDir() ([]string, [][]byte, error) {
	entries, err := os.ReadDir(p.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("enforcer: policy directory %s does not exist: create it (it may stay empty) or run without --policy-dir", p.dir)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("enforcer: policy directory: %w", err)
	}
	var names []string
	var contents [][]byte
	for _, e := range entries {
		n := e.Name()
		ext := strings.ToLower(filepath.Ext(n))
		if strings.HasPrefix(n, ".") || (ext != ".yaml" && ext != ".yml" && ext != ".json") {
			continue
		}
		path := filepath.Join(p.dir, n)
		if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
			continue // a dangling link, a directory
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, nil, fmt.Errorf("enforcer: policy file: %w", err)
		}
		names, contents = append(names, path), append(contents, b)
	}
	return names, contents, nil
}
