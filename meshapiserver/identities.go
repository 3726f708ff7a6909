package meshapiserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/clustermesh/clustermesh/wire"
)

// ErrIdentitiesExhausted is returned when a cluster's identity range is full.
var ErrIdentitiesExhausted = errors.New("identity range exhausted")

// identityAllocator hands out numeric identities for label sets inside one
// cluster's range and persists them, so that an identity keeps its number
// across restarts of the apiserver (agents and policy keep working on it).
//
// Not safe for concurrent use: the publisher owns it.
type identityAllocator struct {
	path        string // "" keeps allocations in memory only
	first, last uint32
	byLabels    map[string]uint32 // label string → id
	next        uint32
}

// identityFile is the on-disk form: label string → identity.
type identityFile struct {
	Cluster    string            `json:"cluster"`
	ClusterID  uint32            `json:"clusterID"`
	Identities map[string]uint32 `json:"identities"`
}

func newIdentityAllocator(path string, c wire.Cluster) (*identityAllocator, error) {
	first, last := wire.IdentityRange(c.ID, c.MaxConnectedClusters)
	a := &identityAllocator{path: path, first: first, last: last, byLabels: map[string]uint32{}, next: first}
	if path == "" {
		return a, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return a, nil
	}
	if err != nil {
		return nil, fmt.Errorf("meshapiserver: identities: %w", err)
	}
	var f identityFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("meshapiserver: identities file %s: %w (fix or remove it; identities will be renumbered)", path, err)
	}
	if f.Cluster != c.Name || f.ClusterID != c.ID {
		return nil, fmt.Errorf("meshapiserver: identities file %s belongs to cluster %q id %d, not %q id %d: use another --state-dir",
			path, f.Cluster, f.ClusterID, c.Name, c.ID)
	}
	for ls, id := range f.Identities {
		if id < first || id > last {
			return nil, fmt.Errorf("meshapiserver: identities file %s: identity %d outside %d..%d", path, id, first, last)
		}
		a.byLabels[ls] = id
		if id >= a.next {
			a.next = id + 1
		}
	}
	return a, nil
}

// allocate returns the identity of ls, allocating one if needed. It reports
// whether a new one was allocated (the caller then saves).
func (a *identityAllocator) allocate(ls wire.Labels) (uint32, bool, error) {
	key := ls.String()
	if id, ok := a.byLabels[key]; ok {
		return id, false, nil
	}
	if a.next > a.last {
		return 0, false, fmt.Errorf("meshapiserver: %w (%d identities in use)", ErrIdentitiesExhausted, len(a.byLabels))
	}
	id := a.next
	a.next++
	a.byLabels[key] = id
	return id, true, nil
}

// save writes the allocations atomically (write to a temporary file, rename).
func (a *identityAllocator) save(c wire.Cluster) error {
	if a.path == "" {
		return nil
	}
	f := identityFile{Cluster: c.Name, ClusterID: c.ID, Identities: a.byLabels}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(a.path), 0o700); err != nil {
		return fmt.Errorf("meshapiserver: identities: %w", err)
	}
	tmp := a.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("meshapiserver: identities: %w", err)
	}
	if err := os.Rename(tmp, a.path); err != nil {
		return fmt.Errorf("meshapiserver: identities: %w", err)
	}
	return nil
}
