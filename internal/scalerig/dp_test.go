package scalerig

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
)

// batchDatapath is a datapath with batched ipcache writes (both do).
type batchDatapath interface {
	datapath.Datapath
	datapath.BatchWriter
}

// watchedDP is a datapath that tells when a watched prefix is written
// (upserted or deleted): the real eBPF maps as root, so that the agent's
// memory is its own (the maps are the kernel's), else the in-memory one.
type watchedDP struct {
	batchDatapath
	pin   string // the maps' pin directory, removed on Close
	mu    sync.Mutex
	watch netip.Prefix   // guarded by mu
	hits  chan time.Time // one per write of watch
	// deleted counts ipcache entries and service frontends deleted, and
	// backends a service update dropped: what left the maps.
	deleted  int                       // guarded by mu
	backends map[datapath.Frontend]int // guarded by mu: each frontend's last backend count
}

// removed is how many entries have left the maps so far.
func (w *watchedDP) removed() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.deleted
}

func (w *watchedDP) UpsertService(f datapath.Frontend, bs []datapath.Backend) error {
	err := w.batchDatapath.UpsertService(f, bs)
	w.mu.Lock()
	if w.backends == nil {
		w.backends = map[datapath.Frontend]int{}
	}
	w.deleted += max(w.backends[f]-len(bs), 0)
	w.backends[f] = len(bs)
	w.mu.Unlock()
	return err
}

func (w *watchedDP) DeleteService(f datapath.Frontend) error {
	err := w.batchDatapath.DeleteService(f)
	w.mu.Lock()
	w.deleted += max(w.backends[f], 1)
	delete(w.backends, f)
	w.mu.Unlock()
	return err
}

func newWatchedDP() (*watchedDP, error) {
	w := &watchedDP{hits: make(chan time.Time, 16)}
	if os.Geteuid() != 0 {
		w.batchDatapath = datapath.NewMemory()
		return w, nil
	}
	w.pin = filepath.Join("/sys/fs/bpf", fmt.Sprintf("cm-scalerig-%d-%d", os.Getpid(), time.Now().UnixNano()))
	m, err := datapath.OpenMaps(datapath.Config{PinDir: w.pin, NoIPCacheMirror: true})
	if err != nil {
		return nil, fmt.Errorf("opening eBPF maps: %w", err)
	}
	w.batchDatapath = m
	return w, nil
}

// Close closes the maps and removes their pins.
func (w *watchedDP) Close() error {
	err := w.batchDatapath.Close()
	if w.pin != "" {
		if rerr := datapath.RemovePins(w.pin); err == nil {
			err = rerr
		}
	}
	return err
}

// kind says which datapath the figures were measured on.
func (w *watchedDP) kind() string { return w.batchDatapath.Kind() }

func (w *watchedDP) setWatch(p netip.Prefix) {
	w.mu.Lock()
	w.watch = p
	w.mu.Unlock()
}

func (w *watchedDP) seen(ps ...netip.Prefix) {
	now := time.Now()
	w.mu.Lock()
	watch := w.watch
	w.mu.Unlock()
	for _, p := range ps {
		if p == watch {
			select {
			case w.hits <- now:
			default:
			}
		}
	}
}

func (w *watchedDP) UpsertIPCache(p netip.Prefix, e datapath.IPCacheEntry) error {
	err := w.batchDatapath.UpsertIPCache(p, e)
	w.seen(p)
	return err
}

func (w *watchedDP) UpsertIPCacheBatch(ps []netip.Prefix, es []datapath.IPCacheEntry) error {
	err := w.batchDatapath.UpsertIPCacheBatch(ps, es)
	w.seen(ps...)
	return err
}

func (w *watchedDP) DeleteIPCache(p netip.Prefix) error {
	err := w.batchDatapath.DeleteIPCache(p)
	w.seen(p)
	w.mu.Lock()
	if p != w.watch {
		w.deleted++
	}
	w.mu.Unlock()
	return err
}
