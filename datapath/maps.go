package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Maps is the Datapath over the real eBPF maps, pinned by name in
// Config.PinDir. It keeps an in-memory mirror of what it wrote, to skip
// writes that change nothing and to allocate and refcount backend ids; the
// mirror is rebuilt from the kernel maps on open, so a restarted agent
// carries on where the previous one stopped. Dumps read the kernel maps.
//
// All methods are safe for concurrent use.
type Maps struct {
	cfg Config

	mu     sync.Mutex
	closed bool // guarded by mu

	// The maps; their fds are used under mu, and closed by Close.
	ipcache  *ebpf.Map
	services *ebpf.Map
	backends *ebpf.Map

	ipc          map[netip.Prefix]IPCacheEntry // guarded by mu: mirror of cm_ipcache (nil: Config.NoIPCacheMirror)
	svcs         map[Frontend]*svcState        // guarded by mu: mirror of cm_services
	backendIDs   map[Backend]uint32            // guarded by mu: id of each backend in cm_backends
	backendsByID map[uint32]Backend            // guarded by mu: mirror of cm_backends
	refs         map[uint32]int                // guarded by mu: slots (of all services) pointing at each id
	nextID       uint32                        // guarded by mu: next backend id to try (never 0)
	noBatch      bool                          // guarded by mu: the ipcache refused BatchUpdate
}

// svcState mirrors one frontend's entries in cm_services.
type svcState struct {
	master bool     // the master entry (slot 0) exists
	count  uint16   // the master's Count
	slots  []uint32 // slots 1..len(slots) exist; slots[i] is slot i+1's backend id (0: unknown, rewrite it)
}

var (
	_ Datapath    = (*Maps)(nil)
	_ BatchWriter = (*Maps)(nil)
)

var (
	memlockOnce sync.Once
	memlockErr  error
)

func mapSpecs(cfg Config) []*ebpf.MapSpec {
	return []*ebpf.MapSpec{
		{
			Name: IPCacheMapName, Type: ebpf.LPMTrie, Flags: bpfmap.FNoPrealloc,
			KeySize: ipcacheKeySize, ValueSize: ipcacheValueSize, MaxEntries: cfg.MaxIPCache,
			Pinning: ebpf.PinByName,
		},
		{
			Name: ServicesMapName, Type: ebpf.Hash,
			KeySize: serviceKeySize, ValueSize: serviceValueSize, MaxEntries: cfg.MaxServiceSlots,
			Pinning: ebpf.PinByName,
		},
		{
			Name: BackendsMapName, Type: ebpf.Hash,
			KeySize: backendIDSize, ValueSize: backendValueSize, MaxEntries: cfg.MaxBackends,
			Pinning: ebpf.PinByName,
		},
	}
}

// OpenMaps opens the maps pinned in cfg.PinDir, creating (and pinning) those
// that do not exist yet, and rebuilds its mirror from their contents. It
// mounts the bpffs at /sys/fs/bpf if PinDir lies there and it is missing.
// A pinned map with another definition fails with ErrIncompatiblePin (which
// also wraps ebpf.ErrMapIncompatible). Without privileges the error wraps
// os.ErrPermission.
func OpenMaps(cfg Config) (*Maps, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	memlockOnce.Do(func() { memlockErr = rlimit.RemoveMemlock() })
	if memlockErr != nil {
		return nil, fmt.Errorf("datapath: remove memlock rlimit: %w", memlockErr)
	}
	if err := bpfmap.PreparePinDir(cfg.PinDir); err != nil {
		return nil, err
	}

	opened, err := bpfmap.OpenPinned(mapSpecs(cfg), cfg.PinDir, "open maps", sizes)
	if err != nil {
		return nil, err
	}

	m := &Maps{
		cfg:          cfg,
		ipcache:      opened[0],
		services:     opened[1],
		backends:     opened[2],
		ipc:          make(map[netip.Prefix]IPCacheEntry),
		svcs:         make(map[Frontend]*svcState),
		backendIDs:   make(map[Backend]uint32),
		backendsByID: make(map[uint32]Backend),
		refs:         make(map[uint32]int),
		nextID:       1,
	}
	if cfg.NoIPCacheMirror {
		m.ipc = nil
	}
	if err := m.rebuild(); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// Config returns the configuration in use, defaults applied.
func (m *Maps) Config() Config { return m.cfg }

// Kind returns "ebpf".
func (m *Maps) Kind() string { return "ebpf" }

// Close closes the maps' file descriptors; the pins, and so the maps and their
// contents, stay. Further calls return ErrClosed. Close is idempotent.
func (m *Maps) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	return errors.Join(m.ipcache.Close(), m.services.Close(), m.backends.Close())
}

// Unpin removes the pins (and the pin directory if it is left empty): the
// maps disappear once no fd refers to them. It works before or after Close.
func (m *Maps) Unpin() error { return RemovePins(m.cfg.PinDir) }

// Handles are the mesh maps as the programs that read them need them (the
// socket load balancer, the policy programs: their loaders put these maps in
// place of the programs' own definitions). They are duplicates of the Maps'
// file descriptors: valid until Close, whatever becomes of the Maps, and
// never written through (the Maps own every write and its mirror).
type Handles struct {
	IPCache, Services, Backends *ebpf.Map
}

// Handles returns duplicates of the three maps' file descriptors (ErrClosed
// once the Maps are closed). The caller closes them.
func (m *Maps) Handles() (*Handles, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, bpfmap.Closed("share the maps")
	}
	h := &Handles{}
	var err error
	if h.IPCache, err = m.ipcache.Clone(); err == nil {
		if h.Services, err = m.services.Clone(); err == nil {
			h.Backends, err = m.backends.Clone()
		}
	}
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("datapath: share the maps: %w", err)
	}
	return h, nil
}

// Close closes the handles. Idempotent.
func (h *Handles) Close() error {
	var errs []error
	for _, em := range []**ebpf.Map{&h.IPCache, &h.Services, &h.Backends} {
		if *em != nil {
			errs = append(errs, (*em).Close())
			*em = nil
		}
	}
	return errors.Join(errs...)
}

// mapErr wraps an error of a write to em, turning "map full" into ErrFull
// with the option to raise.
func (m *Maps) mapErr(em *ebpf.Map, op string, err error) error {
	if errno, full := bpfmap.IsFull(err); full {
		name := IPCacheMapName
		switch em {
		case m.services:
			name = ServicesMapName
		case m.backends:
			name = BackendsMapName
		}
		return fullErr(op, name, em.MaxEntries(), errno)
	}
	return fmt.Errorf("datapath: %s: %w", op, err)
}

// UpsertIPCache maps p to e in cm_ipcache; a write identical to the mirror is
// skipped.
func (m *Maps) UpsertIPCache(p netip.Prefix, e IPCacheEntry) error {
	p, err := normPrefix(p)
	if err != nil {
		return err
	}
	if e, err = normEntry(p, e); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return bpfmap.Closed("upsert ipcache")
	}
	if old, ok := m.ipc[p]; ok && old == e {
		return nil
	}
	k, v := makeIPCacheKey(p), makeIPCacheValue(e)
	if err := m.ipcache.Update(&k, &v, ebpf.UpdateAny); err != nil {
		return m.mapErr(m.ipcache, "upsert "+p.String()+" into the ipcache", err)
	}
	m.mirrorIPC(p, e)
	return nil
}

// UpsertIPCacheBatch upserts many prefixes at once (prefixes[i] → entries[i])
// for the initial sync. The whole batch is validated before anything is
// written; entries identical to the mirror are skipped, and the rest go in
// one BPF_MAP_UPDATE_BATCH (falling back to single updates on a kernel that
// lacks it). On error a prefix of the batch may have been written.
func (m *Maps) UpsertIPCacheBatch(prefixes []netip.Prefix, entries []IPCacheEntry) error {
	ps, es, err := normBatch(prefixes, entries)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return bpfmap.Closed("upsert ipcache batch")
	}
	keys := make([]ipcacheKey, 0, len(ps))
	vals := make([]ipcacheValue, 0, len(ps))
	todo := make([]int, 0, len(ps))
	for i, p := range ps {
		if old, ok := m.ipc[p]; ok && old == es[i] {
			continue
		}
		keys = append(keys, makeIPCacheKey(p))
		vals = append(vals, makeIPCacheValue(es[i]))
		todo = append(todo, i)
	}
	if len(todo) == 0 {
		return nil
	}
	if !m.noBatch {
		n, err := m.ipcache.BatchUpdate(keys, vals, nil)
		for _, i := range todo[:n] {
			m.mirrorIPC(ps[i], es[i])
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return m.mapErr(m.ipcache, fmt.Sprintf("batch upsert of %d prefixes into the ipcache (%d written)", len(todo), n), err)
		}
		m.noBatch = true
		keys, vals, todo = keys[n:], vals[n:], todo[n:]
	}
	for j, i := range todo {
		if err := m.ipcache.Update(&keys[j], &vals[j], ebpf.UpdateAny); err != nil {
			return m.mapErr(m.ipcache, "upsert "+ps[i].String()+" into the ipcache", err)
		}
		m.mirrorIPC(ps[i], es[i])
	}
	return nil
}

// mirrorIPC records a written entry, unless the mirror is off.
func (m *Maps) mirrorIPC(p netip.Prefix, e IPCacheEntry) {
	if m.ipc != nil {
		m.ipc[p] = e
	}
}

// DeleteIPCache removes p from cm_ipcache; an absent prefix is fine.
func (m *Maps) DeleteIPCache(p netip.Prefix) error {
	p, err := normPrefix(p)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return bpfmap.Closed("delete ipcache")
	}
	if _, ok := m.ipc[p]; !ok && m.ipc != nil {
		return nil
	}
	k := makeIPCacheKey(p)
	if err := m.ipcache.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("datapath: delete %s from the ipcache: %w", p, err)
	}
	delete(m.ipc, p)
	return nil
}

// LookupIPCache is the entry of the longest prefix of cm_ipcache holding
// addr, as the programs find it; false when none does.
func (m *Maps) LookupIPCache(addr netip.Addr) (IPCacheEntry, bool) {
	addr = addr.Unmap()
	if !addr.IsValid() {
		return IPCacheEntry{}, false
	}
	k := makeIPCacheKey(netip.PrefixFrom(addr, addr.BitLen()))
	var v ipcacheValue
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.ipcache.Lookup(&k, &v) != nil {
		return IPCacheEntry{}, false
	}
	return v.entry(), true
}

// IPCache dumps cm_ipcache from the kernel.
func (m *Maps) IPCache() (map[netip.Prefix]IPCacheEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, bpfmap.Closed("dump ipcache")
	}
	out := make(map[netip.Prefix]IPCacheEntry, len(m.ipc))
	err := bpfmap.Dump(m.ipcache, func(k *ipcacheKey, v *ipcacheValue) {
		if p, ok := k.prefix(); ok {
			out[p] = v.entry()
		}
	})
	if err != nil {
		return nil, fmt.Errorf("datapath: dump ipcache: %w", err)
	}
	return out, nil
}
