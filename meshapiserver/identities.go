package meshapiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/clustermesh/clustermesh/internal/atomicfile"
	"github.com/clustermesh/clustermesh/wire"
)

// ErrIdentitiesExhausted is returned when a cluster's identity range is full.
var ErrIdentitiesExhausted = errors.New("identity range exhausted")

// IdentityStore keeps a cluster's identity numbers (label string → identity)
// across restarts of its apiserver, so that an identity keeps its number
// (agents and policy keep working on it). IdentityFile keeps them in a file;
// k8ssource.IdentityStore in a ConfigMap of the cluster.
//
// Load returns what was saved for cluster c (an empty map when nothing was),
// and an error when what is stored belongs to another cluster name or id.
// Save replaces what is stored with ids. The apiserver calls them from one
// goroutine.
type IdentityStore interface {
	Load(ctx context.Context, c wire.Cluster) (map[string]uint32, error)
	Save(ctx context.Context, c wire.Cluster, ids map[string]uint32) error
}

// identityAllocator hands out numeric identities for label sets inside one
// cluster's range and persists them through its store.
//
// Not safe for concurrent use: the publisher owns it.
type identityAllocator struct {
	store       IdentityStore // nil keeps allocations in memory only
	first, last uint32
	byLabels    map[string]uint32 // label string → id
	next        uint32
	// dirty is set while allocations are not saved (a failed save is
	// retried with the next publish).
	dirty bool
}

func newIdentityAllocator(ctx context.Context, store IdentityStore, c wire.Cluster) (*identityAllocator, error) {
	first, last := wire.IdentityRange(c.ID, c.MaxConnectedClusters)
	a := &identityAllocator{store: store, first: first, last: last, byLabels: map[string]uint32{}, next: first}
	if store == nil {
		return a, nil
	}
	saved, err := store.Load(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("loading the stored identities: %w", err)
	}
	for ls, id := range saved {
		if id < first || id > last {
			return nil, fmt.Errorf("loading the stored identities: identity %d of %q is outside cluster %s's range %d..%d: delete the stored identities (they will be renumbered)", id, ls, c.Name, first, last)
		}
		a.byLabels[ls] = id
		if id >= a.next {
			a.next = id + 1
		}
	}
	return a, nil
}

// allocate returns the identity of ls, allocating one if needed. It reports
// whether a new one was allocated (then saveIfNeeded saves).
func (a *identityAllocator) allocate(ls wire.Labels) (uint32, bool, error) {
	key := ls.String()
	if id, ok := a.byLabels[key]; ok {
		return id, false, nil
	}
	if a.next > a.last {
		return 0, false, fmt.Errorf("allocating an identity: %w (%d identities in use)", ErrIdentitiesExhausted, len(a.byLabels))
	}
	id := a.next
	a.next++
	a.byLabels[key] = id
	a.dirty = true
	return id, true, nil
}

// saveIfNeeded persists the allocations through the store unless they are
// saved already.
func (a *identityAllocator) saveIfNeeded(ctx context.Context, c wire.Cluster) error {
	if a.store == nil || !a.dirty {
		return nil
	}
	if err := a.store.Save(ctx, c, a.byLabels); err != nil {
		return fmt.Errorf("saving identities: %w", err)
	}
	a.dirty = false
	return nil
}

// IdentityFile is an IdentityStore in a JSON file, written atomically (a
// temporary file, then a rename).
type IdentityFile struct {
	Path string
}

// Load reads the file; a missing file holds no identities.
func (f IdentityFile) Load(_ context.Context, c wire.Cluster) (map[string]uint32, error) {
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]uint32{}, nil
	}
	if err != nil {
		return nil, err // names the file
	}
	var d wire.IdentityDocument
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("parsing %s: %w (fix or remove it; identities will be renumbered)", f.Path, err)
	}
	return d.Check(c, "file "+f.Path, "use another --state-dir")
}

// Save writes the file atomically.
func (f IdentityFile) Save(_ context.Context, c wire.Cluster, ids map[string]uint32) error {
	b, err := json.MarshalIndent(wire.IdentityDocument{Cluster: c.Name, ClusterID: c.ID, Identities: ids}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(f.Path), 0o700); err != nil {
		return err // names the directory
	}
	if err := atomicfile.Write(f.Path, b, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", f.Path, err)
	}
	return nil
}

// adopt makes the identities published in the store (number → label
// string) the allocator's: what agents hold is the truth, so a new leader
// never renumbers an entry. A label set the identity store knows under
// another number, or a number it gives other labels, yields to the
// published identity. Of two published numbers for one label set the lower is kept (the
// other is no longer desired and goes). It returns how many it adopted.
func (a *identityAllocator) adopt(published map[uint32]string) int {
	byID := make(map[uint32]string, len(a.byLabels))
	for ls, id := range a.byLabels {
		byID[id] = ls
	}
	ids := make([]uint32, 0, len(published))
	for id := range published {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	taken := make(map[string]bool, len(published))
	n := 0
	for _, id := range ids {
		ls := published[id]
		if taken[ls] || id < a.first || id > a.last {
			continue
		}
		taken[ls] = true
		if cur, ok := a.byLabels[ls]; ok && cur == id {
			continue
		}
		if other, ok := byID[id]; ok {
			delete(a.byLabels, other)
		}
		if cur, ok := a.byLabels[ls]; ok {
			delete(byID, cur)
		}
		a.byLabels[ls], byID[id] = id, ls
		if id >= a.next {
			a.next = id + 1
		}
		a.dirty = true
		n++
	}
	return n
}
