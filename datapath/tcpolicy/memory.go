package tcpolicy

import (
	"sync"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Memory is the Writer of the in-memory datapath (datapath.Memory): the
// keys, validated and normalised as Programs does, with nothing to enforce
// them. Safe for concurrent use.
type Memory struct {
	mu     sync.Mutex
	closed bool             // guarded by mu
	keys   map[Key]struct{} // guarded by mu
}

var _ Writer = (*Memory)(nil)

// NewMemory returns an empty in-memory policy.
func NewMemory() *Memory { return &Memory{keys: map[Key]struct{}{}} }

// Close makes further calls fail with datapath.ErrClosed.
func (d *Memory) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

// UpsertPolicy records k.
func (d *Memory) UpsertPolicy(k Key) error {
	return d.ApplyPolicy([]Change{{Key: k, Add: true}})
}

// DeletePolicy forgets k.
func (d *Memory) DeletePolicy(k Key) error {
	return d.ApplyPolicy([]Change{{Key: k}})
}

// ApplyPolicy applies changes in order after validating them all.
func (d *Memory) ApplyPolicy(changes []Change) error {
	norm := make([]Change, len(changes))
	for i, c := range changes {
		k, err := normKey(c.Key)
		if err != nil {
			return err
		}
		norm[i] = Change{Key: k, Add: c.Add}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return bpfmap.Closed("apply policy")
	}
	for _, c := range norm {
		if c.Add {
			d.keys[c.Key] = struct{}{}
		} else {
			delete(d.keys, c.Key)
		}
	}
	return nil
}

// SyncPolicy replaces every key by keys.
func (d *Memory) SyncPolicy(keys []Key) error {
	return d.SyncPolicyKeeping(keys, nil)
}

// SyncPolicyKeeping replaces every key by keys, except the keys whose peer
// keepPeer accepts, which stay (nil keeps nothing). keepPeer is called with
// d locked: it must not call into d.
func (d *Memory) SyncPolicyKeeping(keys []Key, keepPeer func(peer uint32) bool) error {
	want := make(map[Key]struct{}, len(keys))
	for _, k := range keys {
		k, err := normKey(k)
		if err != nil {
			return err
		}
		want[k] = struct{}{}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return bpfmap.Closed("sync policy")
	}
	if keepPeer != nil {
		for k := range d.keys {
			if keepPeer(k.Peer) {
				want[k] = struct{}{}
			}
		}
	}
	d.keys = want
	return nil
}

// Policies lists the keys, sorted.
func (d *Memory) Policies() ([]Key, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, bpfmap.Closed("list policy")
	}
	out := make([]Key, 0, len(d.keys))
	for k := range d.keys {
		out = append(out, k)
	}
	sortKeys(out)
	return out, nil
}
