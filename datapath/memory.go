package datapath

import (
	"net/netip"
	"sync"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Memory is the Datapath in plain Go maps, with the same validation,
// normalisation and semantics as Maps (slot order, weights, empty services,
// idempotency), but nothing reaches the kernel. Open falls back to it when
// eBPF is not permitted. It has no size limits. Safe for concurrent use.
type Memory struct {
	mu     sync.Mutex
	closed bool                          // guarded by mu
	ipc    map[netip.Prefix]IPCacheEntry // guarded by mu
	svcs   map[Frontend][]Backend        // guarded by mu
}

var (
	_ Datapath    = (*Memory)(nil)
	_ BatchWriter = (*Memory)(nil)
)

// NewMemory returns an empty in-memory datapath.
func NewMemory() *Memory {
	return &Memory{ipc: make(map[netip.Prefix]IPCacheEntry), svcs: make(map[Frontend][]Backend)}
}

// Kind returns "memory".
func (d *Memory) Kind() string { return "memory" }

// Close makes further calls fail with ErrClosed.
func (d *Memory) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

// LookupIPCache is the entry of the longest prefix holding addr, as the
// eBPF trie answers; false when none does.
func (d *Memory) LookupIPCache(addr netip.Addr) (IPCacheEntry, bool) {
	addr = addr.Unmap()
	if !addr.IsValid() {
		return IPCacheEntry{}, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for bits := addr.BitLen(); bits >= 0; bits-- {
		p, _ := addr.Prefix(bits)
		if e, ok := d.ipc[p]; ok {
			return e, true
		}
	}
	return IPCacheEntry{}, false
}

func (d *Memory) UpsertIPCache(p netip.Prefix, e IPCacheEntry) error {
	p, err := normPrefix(p)
	if err != nil {
		return err
	}
	if e, err = normEntry(p, e); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return bpfmap.Closed("upsert ipcache")
	}
	d.ipc[p] = e
	return nil
}

// UpsertIPCacheBatch upserts prefixes[i] → entries[i], validating all first.
func (d *Memory) UpsertIPCacheBatch(prefixes []netip.Prefix, entries []IPCacheEntry) error {
	ps, es, err := normBatch(prefixes, entries)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return bpfmap.Closed("upsert ipcache batch")
	}
	for i, p := range ps {
		d.ipc[p] = es[i]
	}
	return nil
}

func (d *Memory) DeleteIPCache(p netip.Prefix) error {
	p, err := normPrefix(p)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return bpfmap.Closed("delete ipcache")
	}
	delete(d.ipc, p)
	return nil
}

func (d *Memory) UpsertService(f Frontend, backends []Backend) error {
	f, err := normFrontend(f)
	if err != nil {
		return err
	}
	bs, err := normBackends(f, backends)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return bpfmap.Closed("upsert service " + f.String())
	}
	d.svcs[f] = bs
	return nil
}

func (d *Memory) DeleteService(f Frontend) error {
	f, err := normFrontend(f)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return bpfmap.Closed("delete service " + f.String())
	}
	delete(d.svcs, f)
	return nil
}

func (d *Memory) IPCache() (map[netip.Prefix]IPCacheEntry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, bpfmap.Closed("dump ipcache")
	}
	out := make(map[netip.Prefix]IPCacheEntry, len(d.ipc))
	for p, e := range d.ipc {
		out[p] = e
	}
	return out, nil
}

func (d *Memory) Services() (map[Frontend][]Backend, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, bpfmap.Closed("dump services")
	}
	out := make(map[Frontend][]Backend, len(d.svcs))
	for f, bs := range d.svcs {
		out[f] = append(make([]Backend, 0, len(bs)), bs...)
	}
	return out, nil
}
