package agentsync

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/wire"
)

// kindState is one remote's entries of one kind and their list+watch. The
// entries survive disconnects. Mark-and-sweep: a (re)list starts a new
// generation, every entry it sees (valid, or a known key whose new value was
// rejected) is moved to it, and only after the list completed are entries of
// older generations removed.
//
// The store is written only by the kind's goroutine (one session at a time)
// and read for counts; it has its own lock because a kindState moves to a
// new remote object when the remote's config file changes.
type kindState struct {
	r    *remote
	kind wire.Kind

	// lay is where the current session reads the kind (the remote's
	// state or a cache's copy); set by run before anything reads it.
	lay layout

	mu    sync.Mutex
	store kindStore // guarded by mu
	gen   uint32    // guarded by mu; generation of the current list
	stats kindStats // guarded by mu
	// sizes and lim account for the remote's Limits (limits.go); bytes is
	// the sum of sizes, read by the other kinds without mu.
	sizes map[string]keyMeta // guarded by mu; not kept for ipcache
	lim   limitStats         // guarded by mu
	bytes atomic.Int64
}

// kindStats are a kind's counters for status and metrics.
type kindStats struct {
	events       uint64        // entries applied from lists and watches
	lastSyncTook time.Duration // duration of the last complete list
	lists        uint64        // complete lists (one per session, plus relists)
	maxPageBytes int64         // the largest list page read
}

// kindStore holds one kind's accepted entries of one remote, each tagged
// with the generation of the list (or watch) that last saw it.
type kindStore interface {
	// apply decodes and validates one entry and merges it; an error means
	// it was rejected (a known key keeps its last valid value).
	apply(key string, value []byte, gen uint32) error
	// touch moves a known key to gen without changing it.
	touch(key string, gen uint32)
	// remove forgets key and takes it out of the merged state.
	remove(key string)
	// sweep removes every entry older than gen; it returns how many.
	sweep(gen uint32) int
	count() int
	// clear forgets everything (after the merger dropped the cluster).
	clear()
	// has reports whether key is held.
	has(key string) bool
}

// refusalStore is a kindStore that takes an entry out of force when an
// update of it is refused, rather than keeping its previous value.
type refusalStore interface {
	refuse(key, reason string)
}

func newKindState(r *remote, k wire.Kind) *kindState {
	return &kindState{r: r, kind: k, store: newStore(r, k), sizes: map[string]keyMeta{}}
}

func (ks *kindState) count() int {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.store.count()
}

func (ks *kindState) snapshotStats() kindStats {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return ks.stats
}

func (ks *kindState) clear() {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.store.clear()
	ks.clearAccountingLocked()
}

// run waits for the kind's canary, then lists and watches until the session
// ends; a compaction relists within the session.
func (ks *kindState) run(ctx context.Context, cli *clientv3.Client, c wire.Cluster, canaries bool, etcdID uint64, lay layout) error {
	ks.lay = lay
	if canaries {
		if err := ks.waitCanary(ctx, cli, c.Name, etcdID); err != nil {
			return err
		}
	}
	for {
		rev, err := ks.list(ctx, cli, c, etcdID)
		if err != nil {
			return err
		}
		// Synced before the sink hears of it: a cache then finds the remote
		// ready when its last kind's canary is queued, and writes its status
		// with it (agents read readiness from that status).
		ks.r.setSynced(ks.kind)
		if f := ks.r.agent.cfg.Forward; f != nil {
			f.Listed(ks.r.name, ks.kind)
		}
		ks.r.eventSeen()
		err = ks.watch(ctx, cli, c, etcdID, rev+1)
		if errors.Is(err, errCompacted) {
			ks.r.log.Info("watch fell behind a compaction, relisting", "kind", ks.kind)
			continue
		}
		return err
	}
}

// waitCanary returns once cilium/synced/<cluster>/<prefix> exists: until
// then the remote's store may hold only part of its state, and a list would
// sweep entries that are merely not yet republished. It polls every
// ProbeInterval (a watch could start past a restarted store's revision).
func (ks *kindState) waitCanary(ctx context.Context, cli *clientv3.Client, cluster string, etcdID uint64) error {
	key := ks.lay.canaryKey(cluster, ks.kind)
	t := time.NewTicker(ks.r.agent.cfg.ProbeInterval / 4)
	defer t.Stop()
	logged := false
	for {
		resp, err := cli.Get(ctx, key)
		if err != nil {
			return ks.r.explain(err)
		}
		if err := ks.r.checkEtcd(resp.Header.ClusterId, etcdID); err != nil {
			return err
		}
		if len(resp.Kvs) == 1 {
			return nil
		}
		if !logged {
			ks.r.log.Info("waiting for synced canary", "kind", ks.kind, "key", key)
			ks.r.setError(fmt.Errorf("remote %s: waiting for the synced canary %s: its %s are not all written yet", ks.r.name, key, ks.kind))
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// list reads the kind's prefix page by page at one revision, applies every
// entry, then sweeps what was not seen. It returns the list's revision.
// The next page is fetched while the current one is applied.
func (ks *kindState) list(ctx context.Context, cli *clientv3.Client, c wire.Cluster, etcdID uint64) (int64, error) {
	started := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	pages := make(chan listPage, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(pages)
		ks.fetchPages(ctx, cli, c, etcdID, pages)
	}()
	defer wg.Wait() // after cancel (defers run in reverse)
	defer cancel()

	gen := ks.newGen()
	var rev int64
	for pg := range pages {
		switch {
		case pg.err != nil:
			return 0, pg.err
		case pg.restart:
			// The list's revision was compacted and the list starts over: a
			// new generation, so that entries seen only by the aborted part
			// are swept unless seen again.
			gen = ks.newGen()
			continue
		}
		rev = pg.resp.Header.Revision
		ks.applyPage(pg.resp.Kvs, gen)
		if pg.last {
			ks.mu.Lock()
			swept := ks.store.sweep(gen)
			ks.sweepAccountingLocked(gen)
			ks.stats.lastSyncTook = time.Since(started)
			ks.stats.lists++
			ks.mu.Unlock()
			if swept > 0 {
				ks.r.log.Info("swept entries gone from the remote", "kind", ks.kind, "count", swept)
			}
			return rev, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("listing the %s of remote %s: the list ended early", ks.kind, ks.r.name)
}

// listPage is one page of a list, or a restart of the list, or its error.
type listPage struct {
	resp    *clientv3.GetResponse
	last    bool
	restart bool
	err     error
}

// fetchPages sends the pages of one consistent list into pages, starting
// over (and saying so) if the list's revision gets compacted.
func (ks *kindState) fetchPages(ctx context.Context, cli *clientv3.Client, c wire.Cluster, etcdID uint64, pages chan<- listPage) {
	send := func(pg listPage) bool {
		select {
		case pages <- pg:
			return true
		case <-ctx.Done():
			return false
		}
	}
	prefix := ks.lay.listPrefix(ks.kind, c.Name)
	end := clientv3.GetPrefixRangeEnd(prefix)
	start, rev := prefix, int64(0)
	pager := newPager(ks.r.agent.cfg.ListPageSize, ks.r.agent.cfg.ListPageBytes)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pager.limit)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, start, opts...)
		if errors.Is(err, rpctypes.ErrCompacted) {
			start, rev = prefix, 0
			if !send(listPage{restart: true}) {
				return
			}
			continue
		}
		if isTooLarge(err) && pager.shrink() {
			continue // the page was over the byte bound: ask for fewer
		}
		if err == nil {
			err = ks.r.checkEtcd(resp.Header.ClusterId, etcdID)
		}
		if err != nil {
			send(listPage{err: ks.r.explain(err)})
			return
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		pager.observe(resp.Kvs)
		ks.notePage(pager.lastBytes)
		last := !resp.More || len(resp.Kvs) == 0
		if !send(listPage{resp: resp, last: last}) || last {
			return
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// newGen starts a new generation of the store.
func (ks *kindState) newGen() uint32 {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.gen++
	return ks.gen
}

// applyPage applies one page of a list (in one merger batch where the kind
// supports it).
func (ks *kindState) applyPage(kvs []*mvccpb.KeyValue, gen uint32) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.batchedLocked(func() {
		for _, kv := range kvs {
			ks.applyLocked(ks.lay.stateKey(ks.kind, ks.r.name, string(kv.Key)), kv.Value, gen)
		}
	})
}

// batchedLocked runs fn with the store's merges deferred to one datapath
// batch, in order, where the store supports it. ks.mu is held.
func (ks *kindState) batchedLocked(fn func()) {
	batch, batched := ks.store.(batchStore)
	if batched {
		batch.begin()
	}
	fn()
	if batched {
		batch.flush()
	}
}

// applyLocked admits, decodes and applies one entry. A refused update of a
// known key keeps its previous value (counted as stale in status), except
// for services, whose backends are withdrawn: a service's old backends are
// known to be wrong once it changed. ks.mu is held.
func (ks *kindState) applyLocked(key string, value []byte, gen uint32) {
	err := ks.admitLocked(key, value)
	if err == nil {
		err = ks.store.apply(key, value, gen)
	}
	if err != nil {
		ks.store.touch(key, gen)
		ks.touchLocked(key, gen)
		if rs, ok := ks.store.(refusalStore); ok {
			rs.refuse(key, rejectReason(err))
		}
		ks.r.reject(err)
		return
	}
	ks.accountLocked(key, value, gen)
	ks.stats.events++
}

// watch applies every change after rev until the session ends.
func (ks *kindState) watch(ctx context.Context, cli *clientv3.Client, c wire.Cluster, etcdID uint64, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	prefix := ks.lay.listPrefix(ks.kind, c.Name)
	// Fragmented: a response of many revisions (a watch that fell behind a
	// burst) comes in pieces within the server's request limit, not as one
	// message over the client's receive limit (paging.go).
	for wr := range cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithFragment()) {
		ks.r.log.Debug("watch response", "kind", ks.kind, "from", rev, "rev", wr.Header.Revision, "events", len(wr.Events), "compact", wr.CompactRevision, "err", wr.Err())
		if wr.CompactRevision != 0 {
			return errCompacted
		}
		if err := wr.Err(); err != nil {
			return ks.r.explain(err)
		}
		if err := ks.r.checkEtcd(wr.Header.ClusterId, etcdID); err != nil {
			return err
		}
		// One response carries a whole publishing transaction (up to
		// thousands of entries): one datapath batch for it.
		ks.mu.Lock()
		gen := ks.gen
		ks.batchedLocked(func() {
			for _, ev := range wr.Events {
				switch ev.Type {
				case mvccpb.PUT:
					ks.applyLocked(ks.lay.stateKey(ks.kind, ks.r.name, string(ev.Kv.Key)), ev.Kv.Value, gen)
				case mvccpb.DELETE:
					key := ks.lay.stateKey(ks.kind, ks.r.name, string(ev.Kv.Key))
					ks.store.remove(key)
					ks.forgetLocked(key)
					ks.stats.events++
				}
			}
		})
		ks.mu.Unlock()
		ks.r.eventSeen()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("watching the %s of remote %s: the watch closed", ks.kind, ks.r.name)
}

// eventSeen records the time of the last applied list or watch event.
func (r *remote) eventSeen() {
	r.mu.Lock()
	r.status.LastEvent = time.Now()
	r.mu.Unlock()
}
