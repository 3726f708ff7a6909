package meshapiserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/wire"
)

// publisher keeps the state prefixes of one cluster's etcd equal to the
// desired entries. It writes in batched transactions, every entry on its
// lease, puts before deletes (so a still-valid entry is never missing), and
// the synced canaries only once the first full snapshot is in.
//
// Not safe for concurrent use: the server's run loop owns it.
type publisher struct {
	cli     *clientv3.Client
	cluster wire.Cluster
	lease   clientv3.LeaseID
	log     *slog.Logger

	txnLatency prometheus.Histogram

	published   desiredKV // what etcd holds under the state prefixes
	endpoints   *endpointCache
	canariesSet bool
	stats       PublishStats
}

// PublishStats counts the publisher's work (for status and metrics).
type PublishStats struct {
	Entries       int           // entries currently published
	Puts, Deletes uint64        // writes since start
	Txns          uint64        // transactions since start
	LastTxn       time.Duration // latency of the last transaction
	LastPublish   time.Time
	// LastWrites entries were written by the last publish that changed
	// anything, in LastWritesTook (computing the difference included).
	LastWrites     int
	LastWritesTook time.Duration
}

// loadExisting reads what the store already holds under the state prefixes
// (a persistent data dir, or a store shared with a previous run), so that the
// first publish removes only what is no longer desired.
func (p *publisher) loadExisting(ctx context.Context) error {
	p.published = desiredKV{}
	for _, k := range wire.Kinds {
		prefix := k.ListPrefix(p.cluster.Name)
		resp, err := p.cli.Get(ctx, prefix, clientv3.WithPrefix())
		if err != nil {
			return fmt.Errorf("meshapiserver: read existing %s: %w", k, err)
		}
		for _, kv := range resp.Kvs {
			if kv.Lease != int64(p.lease) {
				// On a lease nobody keeps alive any more (a previous run):
				// rewrite it on ours, or it would expire.
				p.published[string(kv.Key)] = nil
				continue
			}
			p.published[string(kv.Key)] = kv.Value
		}
	}
	return nil
}

// publish makes the store hold exactly want. After the first successful
// publish it writes the canaries.
func (p *publisher) publish(ctx context.Context, want desiredKV) error {
	began := time.Now()
	var puts, dels []string
	for k, v := range want {
		if old, ok := p.published[k]; !ok || old == nil || !bytes.Equal(old, v) {
			puts = append(puts, k)
		}
	}
	for k := range p.published {
		if _, ok := want[k]; !ok {
			dels = append(dels, k)
		}
	}
	sort.Strings(puts) // deterministic batches
	sort.Strings(dels)
	putOps := make([]clientv3.Op, 0, len(puts))
	for _, k := range puts {
		putOps = append(putOps, clientv3.OpPut(k, string(want[k]), clientv3.WithLease(p.lease)))
	}
	delOps := make([]clientv3.Op, 0, len(dels))
	for _, k := range dels {
		delOps = append(delOps, clientv3.OpDelete(k))
	}
	// Every put is in before the first delete: a still-valid entry is never
	// missing, even for a moment. One transaction when both fit (applied
	// atomically, and one round trip for a change that replaces one entry
	// by another), else the puts' transactions before the deletes'.
	if fitsOneTxn(putOps, delOps) {
		if err := p.commit(ctx, append(putOps, delOps...)); err != nil {
			return err
		}
	} else {
		if err := p.commit(ctx, putOps); err != nil {
			return err
		}
		if err := p.commit(ctx, delOps); err != nil {
			return err
		}
	}
	p.published = want
	p.stats.Entries = len(want)
	p.stats.Puts += uint64(len(puts))
	p.stats.Deletes += uint64(len(dels))
	p.stats.LastPublish = time.Now()
	if len(puts)+len(dels) > 0 {
		p.stats.LastWrites = len(puts) + len(dels)
		p.stats.LastWritesTook = time.Since(began)
		p.log.Debug("published", "puts", len(puts), "deletes", len(dels), "entries", len(want))
	}
	if !p.canariesSet {
		if err := p.writeCanaries(ctx); err != nil {
			return err
		}
		p.canariesSet = true
	}
	return nil
}

// commit writes ops in transactions of at most txnBudgetOps operations and
// about txnBudgetBytes, up to txnParallel of them in flight (etcd batches
// concurrent proposals into one raft round). Order among them is not
// guaranteed: callers commit what must come first in an earlier call.
func (p *publisher) commit(ctx context.Context, ops []clientv3.Op) error {
	var batches [][]clientv3.Op
	for len(ops) > 0 {
		n, size := 0, 0
		for n < len(ops) && n < txnBudgetOps && (n == 0 || size < txnBudgetBytes) {
			size += len(ops[n].KeyBytes()) + len(ops[n].ValueBytes())
			n++
		}
		batches, ops = append(batches, ops[:n]), ops[n:]
	}
	if len(batches) == 1 { // the common case (one change): no goroutine
		start := time.Now()
		if _, err := p.cli.Txn(ctx).Then(batches[0]...).Commit(); err != nil {
			return fmt.Errorf("meshapiserver: publish transaction of %d ops: %w", len(batches[0]), err)
		}
		p.observeTxn(time.Since(start))
		return nil
	}
	took := make([]time.Duration, len(batches))
	errs := make([]error, len(batches))
	sem := make(chan struct{}, txnParallel)
	var wg sync.WaitGroup
	for i, b := range batches {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			start := time.Now()
			if _, err := p.cli.Txn(ctx).Then(b...).Commit(); err != nil {
				errs[i] = fmt.Errorf("meshapiserver: publish transaction of %d ops: %w", len(b), err)
			}
			took[i] = time.Since(start)
		}()
	}
	wg.Wait()
	for _, d := range took {
		p.observeTxn(d)
	}
	return errors.Join(errs...)
}

func (p *publisher) observeTxn(d time.Duration) {
	p.txnLatency.Observe(d.Seconds())
	p.stats.LastTxn = d
	p.stats.Txns++
}

// writeCanaries marks every prefix as fully written.
func (p *publisher) writeCanaries(ctx context.Context) error {
	now := time.Now().UTC().Format(time.RFC3339)
	ops := make([]clientv3.Op, 0, len(wire.Kinds))
	for _, k := range wire.Kinds {
		ops = append(ops, clientv3.OpPut(wire.SyncedKey(p.cluster.Name, k), now, clientv3.WithLease(p.lease)))
	}
	if _, err := p.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("meshapiserver: write synced canaries: %w", err)
	}
	p.log.Info("initial state published, synced canaries written", "entries", len(p.published))
	return nil
}

// heartbeat writes cilium/.heartbeat with the current time.
func (p *publisher) heartbeat(ctx context.Context) error {
	_, err := p.cli.Put(ctx, wire.HeartbeatKey, time.Now().UTC().Format(time.RFC3339Nano), clientv3.WithLease(p.lease))
	if err != nil {
		return fmt.Errorf("meshapiserver: heartbeat: %w", err)
	}
	return nil
}

// fitsOneTxn reports whether puts and deletes fit in one transaction:
// applied atomically, a delete then never shows before the puts.
func fitsOneTxn(puts, dels []clientv3.Op) bool {
	if len(puts)+len(dels) > txnBudgetOps {
		return false
	}
	size := 0
	for _, ops := range [][]clientv3.Op{puts, dels} {
		for _, op := range ops {
			size += len(op.KeyBytes()) + len(op.ValueBytes())
		}
	}
	return size <= txnBudgetBytes
}
