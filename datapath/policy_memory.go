package datapath

import "github.com/clustermesh/clustermesh/datapath/internal/bpfmap"

// The in-memory datapath's policy: the keys, validated and normalised as
// Maps does, with nothing to enforce them.

// UpsertPolicy records k.
func (d *Memory) UpsertPolicy(k PolicyKey) error {
	return d.ApplyPolicy([]PolicyChange{{Key: k, Add: true}})
}

// DeletePolicy forgets k.
func (d *Memory) DeletePolicy(k PolicyKey) error {
	return d.ApplyPolicy([]PolicyChange{{Key: k}})
}

// ApplyPolicy applies changes in order after validating them all.
func (d *Memory) ApplyPolicy(changes []PolicyChange) error {
	norm := make([]PolicyChange, len(changes))
	for i, c := range changes {
		k, err := normPolicyKey(c.Key)
		if err != nil {
			return err
		}
		norm[i] = PolicyChange{Key: k, Add: c.Add}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return bpfmap.Closed("apply policy")
	}
	for _, c := range norm {
		if c.Add {
			d.policy[c.Key] = struct{}{}
		} else {
			delete(d.policy, c.Key)
		}
	}
	return nil
}

// SyncPolicy replaces every key by keys.
func (d *Memory) SyncPolicy(keys []PolicyKey) error {
	return d.SyncPolicyKeeping(keys, nil)
}

// SyncPolicyKeeping replaces every key by keys, except the keys whose peer
// keepPeer accepts, which stay (nil keeps nothing). keepPeer is called with
// d locked: it must not call into d.
func (d *Memory) SyncPolicyKeeping(keys []PolicyKey, keepPeer func(peer uint32) bool) error {
	want := make(map[PolicyKey]struct{}, len(keys))
	for _, k := range keys {
		k, err := normPolicyKey(k)
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
		for k := range d.policy {
			if keepPeer(k.Peer) {
				want[k] = struct{}{}
			}
		}
	}
	d.policy = want
	return nil
}

// Policies lists the keys, sorted.
func (d *Memory) Policies() ([]PolicyKey, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, bpfmap.Closed("list policy")
	}
	out := make([]PolicyKey, 0, len(d.policy))
	for k := range d.policy {
		out = append(out, k)
	}
	sortPolicyKeys(out)
	return out, nil
}
