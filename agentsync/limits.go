package agentsync

import (
	"errors"
	"fmt"
	"sort"

	"github.com/clustermesh/clustermesh/wire"
)

// Limits bound what one remote cluster can make the agent hold, so that a
// peer publishing too much (by mistake or on purpose) cannot crowd the
// other peers out of the shared datapath maps nor grow the agent's memory
// without bound. Entries already held keep updating; only new keys beyond a
// limit are refused (counted, shown in status, logged at a limited rate).
type Limits struct {
	Nodes      int // --max-remote-nodes
	Identities int // --max-remote-identities
	IPCache    int // --max-remote-ipcache-entries
	Services   int // --max-remote-services
	// Bytes bounds the sum of the values held for nodes, identities and
	// services (ipcache entries are held in a fixed size each).
	Bytes int64 // --max-remote-bytes
}

// Default limits per remote: room for a cluster of 100,000 endpoints on
// 5,000 nodes, a quarter of the default ipcache map each (so that at least
// four clusters of that size fit before the map does), and a cluster's whole
// identity range.
const (
	DefaultMaxRemoteNodes      = 20000
	DefaultMaxRemoteIdentities = 65536
	DefaultMaxRemoteIPCache    = 131072
	DefaultMaxRemoteServices   = 16384
	DefaultMaxRemoteBytes      = 512 << 20
)

// ErrOverLimit: a new entry from a remote would exceed one of its Limits.
var ErrOverLimit = errors.New("remote over its limit")

func (l *Limits) withDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.Nodes, DefaultMaxRemoteNodes)
	def(&l.Identities, DefaultMaxRemoteIdentities)
	def(&l.IPCache, DefaultMaxRemoteIPCache)
	def(&l.Services, DefaultMaxRemoteServices)
	if l.Bytes == 0 {
		l.Bytes = DefaultMaxRemoteBytes
	}
}

func (l *Limits) validate() error {
	if l.Nodes < 0 || l.Identities < 0 || l.IPCache < 0 || l.Services < 0 || l.Bytes < 0 {
		return fmt.Errorf("%w: negative per-remote limit", ErrInvalidConfig)
	}
	return nil
}

// of returns the entry limit of kind k and the flag that sets it.
func (l *Limits) of(k wire.Kind) (int, string) {
	switch k {
	case wire.Nodes:
		return l.Nodes, "--max-remote-nodes"
	case wire.Identities:
		return l.Identities, "--max-remote-identities"
	case wire.IPCache:
		return l.IPCache, "--max-remote-ipcache-entries"
	}
	return l.Services, "--max-remote-services"
}

// OverLimit is one limit a remote reached.
type OverLimit struct {
	Kind    string `json:"kind"`
	Limit   string `json:"limit"`   // "131072 entries" or "536870912 bytes"
	Flag    string `json:"flag"`    // the agent flag that raises it
	Refused uint64 `json:"refused"` // new entries refused
}

// keyMeta is what the agent remembers of one held key beyond the store:
// the size of its value (counted against Limits.Bytes) and the generation
// that last saw it (swept with the store).
type keyMeta struct {
	size int32
	gen  uint32
}

// limitStats are a kind's limit counters (guarded by the kindState's mu).
type limitStats struct {
	overEntries uint64            // new keys refused: entry limit
	overBytes   uint64            // new values refused: byte limit
	refused     map[string]uint32 // keys whose last update was refused → gen; their previous value stays
}

// admitLocked checks a value for key against the remote's limits before it
// is applied. ks.mu is held.
func (ks *kindState) admitLocked(key string, value []byte) error {
	lim := &ks.r.agent.cfg.RemoteLimits
	if ks.r.self {
		return nil // the local cluster's own apiserver
	}
	if n, flag := lim.of(ks.kind); ks.store.count() >= n && !ks.store.has(key) {
		ks.lim.overEntries++
		return fmt.Errorf("%s %q: %w: %d %s entries held, the limit (%s)", ks.kind, key, ErrOverLimit, n, ks.kind, flag)
	}
	if ks.kind == wire.IPCache {
		return nil
	}
	old := int64(ks.sizes[key].size)
	if grow := int64(len(value)) - old; grow > 0 && ks.totalBytes()+grow > lim.Bytes {
		ks.lim.overBytes++
		return fmt.Errorf("%s %q: %w: %d bytes of values held, the limit (--max-remote-bytes) is %d", ks.kind, key, ErrOverLimit, ks.totalBytes(), lim.Bytes)
	}
	return nil
}

// totalBytes sums the held values of every kind of the remote. ks.mu is
// held; the other kinds' counters are read atomically.
func (ks *kindState) totalBytes() int64 {
	var n int64
	for _, other := range ks.r.kinds {
		n += other.bytes.Load()
	}
	return n
}

// accountLocked records that key now holds value (applied at gen).
func (ks *kindState) accountLocked(key string, value []byte, gen uint32) {
	delete(ks.lim.refused, key)
	if ks.kind == wire.IPCache {
		return
	}
	old := ks.sizes[key].size
	ks.sizes[key] = keyMeta{size: int32(len(value)), gen: gen}
	ks.bytes.Add(int64(len(value)) - int64(old))
}

// touchLocked moves key's accounting to gen (its value was refused, the
// previous one stays).
func (ks *kindState) touchLocked(key string, gen uint32) {
	if m, ok := ks.sizes[key]; ok {
		m.gen = gen
		ks.sizes[key] = m
	}
	if ks.store.has(key) {
		if ks.lim.refused == nil {
			ks.lim.refused = map[string]uint32{}
		}
		ks.lim.refused[key] = gen
	}
}

// forgetLocked drops key's accounting (deleted or swept).
func (ks *kindState) forgetLocked(key string) {
	delete(ks.lim.refused, key)
	if m, ok := ks.sizes[key]; ok {
		delete(ks.sizes, key)
		ks.bytes.Add(-int64(m.size))
	}
}

// sweepAccountingLocked drops the accounting of keys older than gen.
func (ks *kindState) sweepAccountingLocked(gen uint32) {
	for k, m := range ks.sizes {
		if m.gen < gen {
			ks.forgetLocked(k)
		}
	}
	for k, g := range ks.lim.refused {
		if g < gen {
			delete(ks.lim.refused, k)
		}
	}
}

// clearAccountingLocked forgets everything (a drain).
func (ks *kindState) clearAccountingLocked() {
	ks.sizes = map[string]keyMeta{}
	ks.bytes.Store(0)
	ks.lim.refused = nil
}

// overLimits lists the limits the remote reached, for status.
func (r *remote) overLimits() []OverLimit {
	lim := &r.agent.cfg.RemoteLimits
	var out []OverLimit
	for _, ks := range r.kinds {
		ks.mu.Lock()
		st := ks.lim
		ks.mu.Unlock()
		if st.overEntries > 0 {
			n, flag := lim.of(ks.kind)
			out = append(out, OverLimit{Kind: ks.kind.String(), Limit: fmt.Sprintf("%d entries", n), Flag: flag, Refused: st.overEntries})
		}
		if st.overBytes > 0 {
			out = append(out, OverLimit{Kind: ks.kind.String(), Limit: fmt.Sprintf("%d bytes", lim.Bytes), Flag: "--max-remote-bytes", Refused: st.overBytes})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Kind+out[i].Limit < out[j].Kind+out[j].Limit })
	return out
}

// staleKeys counts, per kind, the keys whose last update was refused and
// whose previous value stays in force.
func (r *remote) staleKeys() map[string]int {
	out := map[string]int{}
	for _, ks := range r.kinds {
		ks.mu.Lock()
		if n := len(ks.lim.refused); n > 0 && ks.kind != wire.Services {
			out[ks.kind.String()] = n
		}
		ks.mu.Unlock()
	}
	return out
}
