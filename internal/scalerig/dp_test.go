package scalerig

import (
	"net/netip"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
)

// watchedDP is the in-memory datapath that tells when a watched prefix is
// written (upserted or deleted).
type watchedDP struct {
	*datapath.Memory
	mu    sync.Mutex
	watch netip.Prefix   // guarded by mu
	hits  chan time.Time // one per write of watch
}

func newWatchedDP() *watchedDP {
	return &watchedDP{Memory: datapath.NewMemory(), hits: make(chan time.Time, 16)}
}

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
	err := w.Memory.UpsertIPCache(p, e)
	w.seen(p)
	return err
}

func (w *watchedDP) UpsertIPCacheBatch(ps []netip.Prefix, es []datapath.IPCacheEntry) error {
	err := w.Memory.UpsertIPCacheBatch(ps, es)
	w.seen(ps...)
	return err
}

func (w *watchedDP) DeleteIPCache(p netip.Prefix) error {
	err := w.Memory.DeleteIPCache(p)
	w.seen(p)
	return err
}
