package kvstoremesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/internal/loglimit"
	"github.com/clustermesh/clustermesh/wire"
)

// op is one queued write.
type op struct {
	key string
	val []byte
	del bool
	// prefix: delete every key under key; committed alone (etcd refuses a
	// transaction whose puts fall in its deleted range).
	prefix bool
	// barrier: written only after everything queued before it (a synced
	// canary after its entries: in their transaction or a later one); it
	// starts a new segment, and keys coalesce only within a segment.
	barrier bool
}

// WriteStats are the cache's writes into its cluster's etcd.
type WriteStats struct {
	Transactions uint64 `json:"transactions"`
	Ops          uint64 `json:"ops"`
	Bytes        uint64 `json:"bytes"`
	// Coalesced counts queued writes replaced by a newer one of the same
	// key before they were written (bursts).
	Coalesced   uint64    `json:"coalesced"`
	Pending     int       `json:"pending"` // queued or being committed
	MaxBatchOps int       `json:"maxBatchOps"`
	Failures    uint64    `json:"failures"`
	LastError   string    `json:"lastError,omitempty"`
	LastCommit  time.Time `json:"lastCommit,omitzero"`
	// PreviousLeft counts the remotes' kinds whose entries of a previous
	// run still wait for their first full list (kept, their lease alive).
	PreviousLeft int `json:"previousLeft"`
	// Unchanged counts the entries of a previous run found again with the
	// same value, on the lease the cache adopted from that run: not
	// rewritten.
	Unchanged uint64 `json:"unchanged"`
}

// writer is the ForwardSink of the cache's reader: it queues every accepted
// entry as a write under the cache layout, coalesced per key while a
// transaction is in flight, and commits the queue in order in transactions
// bounded in operations and bytes, every put on the cache's lease.
type writer struct {
	txnOps, txnBytes int
	log              *slog.Logger
	errLog           *loglimit.Keyed
	wake             chan struct{}
	// listed is signalled when a remote's kind was listed (its canary
	// queued): the status exporter then writes at once the status of a
	// remote that became ready, right after its canary.
	listed chan struct{}

	cli      *clientv3.Client // set by start
	lease    clientv3.LeaseID // set by start
	done     chan struct{}    // closed once no entry of a previous run waits
	mu       sync.Mutex
	queue    []op                // guarded by mu
	idx      map[string]int      // guarded by mu; key → its place in queue since the last barrier
	prev     map[string]kindSets // guarded by mu; a previous run's entries not yet rewritten
	left     int                 // guarded by mu; the sets of prev not yet listed again
	inflight int                 // guarded by mu; ops taken and not yet committed
	st       WriteStats          // guarded by mu
}

// kindSets are one remote's cache entries of a previous run, per kind.
type kindSets map[wire.Kind]map[string]prevEntry

func newWriter(txnOps, txnBytes int, log *slog.Logger) *writer {
	return &writer{txnOps: txnOps, txnBytes: txnBytes, log: log, errLog: loglimit.New(time.Second),
		wake: make(chan struct{}, 1), listed: make(chan struct{}, 1), idx: map[string]int{}, prev: map[string]kindSets{}, done: make(chan struct{})}
}

// start gives the writer its client and lease and what a previous run
// left: the remotes still configured keep it until relisted, the others'
// is deleted now.
func (w *writer) start(cli *clientv3.Client, lease clientv3.LeaseID, prev previous, configured map[string]bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cli, w.lease = cli, lease
	for remote := range prev.remotes {
		if !configured[remote] {
			w.log.Info("deleting what a previous run cached of a remote no longer configured", "remote", remote)
			w.drainLocked(remote)
			continue
		}
		if sets := prev.entries[remote]; len(sets) > 0 {
			w.prev[remote] = sets
			w.left += len(sets)
		}
	}
	w.checkDoneLocked()
	w.signal()
}

func (w *writer) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// enqueueLocked queues o, replacing a queued write of its key in the
// current segment.
func (w *writer) enqueueLocked(o op) {
	if o.barrier || o.prefix {
		clear(w.idx)
		w.queue = append(w.queue, o)
		if o.prefix {
			clear(w.idx) // nothing after it coalesces into what came before
		}
		return
	}
	if i, ok := w.idx[o.key]; ok {
		w.queue[i] = o
		w.st.Coalesced++
		return
	}
	w.idx[o.key] = len(w.queue)
	w.queue = append(w.queue, o)
}

// Connected writes the remote's cluster config, marked cached.
func (w *writer) Connected(remote string, raw []byte) {
	cfg, err := agentsync.CachedClusterConfig(raw)
	if err != nil { // agentsync validated it
		w.log.Error("cluster config of a remote not rewritable", "remote", remote, "err", err)
		return
	}
	w.mu.Lock()
	w.enqueueLocked(op{key: wire.ClusterConfigKey(remote), val: cfg})
	w.mu.Unlock()
	w.signal()
}

// Upsert queues the entry's write under its cache key, unless a previous
// run left it with the same value on the lease the cache adopted (a
// restart then rewrites only what changed while it was down: no write, no
// watch event at the agents).
func (w *writer) Upsert(remote string, k wire.Kind, key string, value []byte) {
	ck, err := agentsync.CacheKey(k, remote, key)
	if err != nil { // validated keys map
		w.log.Error("accepted key without a cache key", "remote", remote, "key", key, "err", err)
		return
	}
	w.mu.Lock()
	if set := w.prev[remote][k]; set != nil {
		if pe, ok := set[ck]; ok {
			delete(set, ck)
			if pe.lease != 0 && pe.lease == w.lease && pe.sum == valueSum(value) {
				w.st.Unchanged++
				w.mu.Unlock()
				return
			}
		}
	}
	w.enqueueLocked(op{key: ck, val: value})
	w.mu.Unlock()
	w.signal()
}

// Delete queues the entry's deletion.
func (w *writer) Delete(remote string, k wire.Kind, key string) {
	ck, err := agentsync.CacheKey(k, remote, key)
	if err != nil {
		return
	}
	w.mu.Lock()
	if set := w.prev[remote][k]; set != nil {
		delete(set, ck) // deleted now: a later Upsert of it is a write
	}
	w.enqueueLocked(op{key: ck, del: true})
	w.mu.Unlock()
	w.signal()
}

// Listed deletes what a previous run cached of remote's kind k and the
// remote no longer has, then (re)writes the kind's synced canary.
func (w *writer) Listed(remote string, k wire.Kind) {
	w.mu.Lock()
	if set, ok := w.prev[remote][k]; ok {
		for ck := range set {
			w.enqueueLocked(op{key: ck, del: true})
		}
		delete(w.prev[remote], k)
		w.left--
		w.checkDoneLocked()
	}
	w.enqueueLocked(op{key: agentsync.CacheSyncedKey(remote, k), val: []byte(time.Now().UTC().Format(time.RFC3339)), barrier: true})
	w.mu.Unlock()
	w.signal()
	select {
	case w.listed <- struct{}{}:
	default:
	}
}

// Drained deletes everything cached of remote.
func (w *writer) Drained(remote string) {
	w.mu.Lock()
	w.drainLocked(remote)
	w.mu.Unlock()
	w.signal()
}

func (w *writer) drainLocked(remote string) {
	if sets, ok := w.prev[remote]; ok {
		w.left -= len(sets)
		delete(w.prev, remote)
		w.checkDoneLocked()
	}
	for _, k := range wire.Kinds {
		w.enqueueLocked(op{key: agentsync.CacheListPrefix(k, remote), prefix: true})
	}
	w.enqueueLocked(op{key: wire.SyncedPrefix + remote + "/cilium/cache/", prefix: true})
	w.enqueueLocked(op{key: wire.ClusterConfigKey(remote), del: true, barrier: true})
	w.enqueueLocked(op{key: agentsync.CacheStatusKey(remote), del: true})
}

// putStatus queues a remote's status.
func (w *writer) putStatus(remote string, val []byte) {
	w.mu.Lock()
	w.enqueueLocked(op{key: agentsync.CacheStatusKey(remote), val: val})
	w.mu.Unlock()
	w.signal()
}

func (w *writer) checkDoneLocked() {
	if w.left == 0 {
		select {
		case <-w.done:
		default:
			close(w.done)
		}
	}
}

// take returns the queue and starts a new one.
func (w *writer) take() []op {
	w.mu.Lock()
	defer w.mu.Unlock()
	q := w.queue
	w.queue = nil
	w.inflight += len(q)
	clear(w.idx)
	return q
}

func (w *writer) stats() WriteStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.st
	st.Pending, st.PreviousLeft = len(w.queue)+w.inflight, w.left
	return st
}

// run commits the queue until ctx is done.
func (w *writer) run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.wake:
		}
		q := w.take()
		for _, b := range w.batches(q) {
			if err := w.commit(ctx, b); err != nil {
				return err
			}
		}
		w.mu.Lock()
		w.inflight -= len(q)
		w.mu.Unlock()
	}
}

// batches splits ops, in order, into transactions: at most txnOps
// operations and txnBytes bytes, a new one at a key the current one already
// writes (etcd refuses a key twice in a transaction; keys repeat only across
// segments), a prefix deletion alone. A barrier (a canary) does not cut: a
// transaction is applied whole, so a canary in the transaction of the
// entries before it is still written after them — at 100 remotes, cutting
// at each of their 400 canaries more than doubled the transactions of a
// resync, each a round trip through the store's raft.
func (w *writer) batches(ops []op) [][]clientv3.Op {
	var out [][]clientv3.Op
	var cur []clientv3.Op
	size := 0
	keys := map[string]struct{}{}
	cut := func() {
		if len(cur) > 0 {
			out = append(out, cur)
		}
		cur, size = nil, 0
		clear(keys)
	}
	for _, o := range ops {
		n := len(o.key) + len(o.val) + 32 // tags, lengths, lease
		_, dup := keys[o.key]
		if dup || o.prefix || len(cur) == w.txnOps || size+n > w.txnBytes {
			cut()
		}
		switch {
		case o.prefix:
			cur = append(cur, clientv3.OpDelete(o.key, clientv3.WithPrefix()))
			cut()
			continue
		case o.del:
			cur = append(cur, clientv3.OpDelete(o.key))
		default:
			cur = append(cur, clientv3.OpPut(o.key, string(o.val), clientv3.WithLease(w.lease)))
		}
		keys[o.key] = struct{}{}
		size += n
	}
	cut()
	return out
}

// commit writes one transaction, retrying with backoff until it is in or
// ctx is done; a lost lease ends the cache.
func (w *writer) commit(ctx context.Context, ops []clientv3.Op) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 50*time.Millisecond, 5*time.Second, 0
	bo.Reset()
	for {
		_, err := w.cli.Txn(ctx).Then(ops...).Commit()
		if err == nil {
			w.committed(ops)
			return nil
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("kvstoremesh: %w (%x): restart the cache to write everything again", ErrLeaseLost, w.lease)
		}
		w.mu.Lock()
		w.st.Failures++
		w.st.LastError = err.Error()
		w.mu.Unlock()
		if ok, suppressed := w.errLog.Allow("txn", time.Now()); ok {
			w.log.Warn("writing the cache failed, retrying", "ops", len(ops), "err", err, "suppressedSinceLast", suppressed)
		}
		t := time.NewTimer(bo.NextBackOff())
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

func (w *writer) committed(ops []clientv3.Op) {
	var bytes int
	for _, o := range ops {
		bytes += len(o.KeyBytes()) + len(o.ValueBytes())
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.st.Transactions++
	w.st.Ops += uint64(len(ops))
	w.st.Bytes += uint64(bytes)
	w.st.MaxBatchOps = max(w.st.MaxBatchOps, len(ops))
	w.st.LastCommit = time.Now()
}

// keepPrevious keeps a previous run's lease alive until every entry of
// that run was rewritten or deleted, then revokes it (whatever is left on
// it — a kind no remote publishes any more — goes with it).
func (w *writer) keepPrevious(ctx context.Context, id clientv3.LeaseID) {
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := w.cli.KeepAlive(kctx, id)
	if err != nil {
		w.log.Info("a previous run's lease is gone", "lease", fmt.Sprintf("%x", id), "err", err)
		return
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for range ch {
		}
	}()
	select {
	case <-ctx.Done():
		cancel()
		<-drained
		return
	case <-drained:
		return // the lease expired or was revoked
	case <-w.done:
	}
	cancel()
	<-drained
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	defer rcancel()
	if _, err := w.cli.Revoke(rctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		w.log.Warn("revoking a previous run's lease", "lease", fmt.Sprintf("%x", id), "err", err)
		return
	}
	w.log.Info("every entry of the previous run rewritten: its lease revoked", "lease", fmt.Sprintf("%x", id))
}
