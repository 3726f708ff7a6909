package kvstoremesh

import (
	"context"
	"hash/maphash"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/wire"
)

// previous is what an earlier run of the cache (or another cache of this
// cluster before it) left in the store.
type previous struct {
	entries map[string]kindSets // remote → kind → cache keys
	remotes map[string]bool     // every remote with anything cached
	leases  []clientv3.LeaseID  // the leases its keys are on
	// most is the lease most of the entries are on: the one a restarted
	// cache adopts, when it is still alive, so that it need not rewrite
	// the entries that did not change (writer.Upsert).
	most clientv3.LeaseID
}

// prevEntry is one entry a previous run left: a sum of its value and its
// lease.
type prevEntry struct {
	sum   uint64
	lease clientv3.LeaseID
}

// valueSeed seeds valueSum; sums are compared within one process only.
var valueSeed = maphash.MakeSeed()

// valueSum is a 64-bit sum of an entry's value: a previous run's entry whose
// sum is the relisted value's is taken as unchanged (a collision, 2^-64 per
// entry, would keep a stale value until the entry's next change).
func valueSum(v []byte) uint64 { return maphash.Bytes(valueSeed, v) }

func (p previous) count() int {
	n := 0
	for _, sets := range p.entries {
		for _, s := range sets {
			n += len(s)
		}
	}
	return n
}

// loadPageKeys bounds one page of the previous run's keys.
const loadPageKeys = 10000

// loadPrevious reads the entries under cilium/cache/ (keys, leases and a sum
// of each value) and the cache's canaries (keys only), page by page at one
// revision.
func loadPrevious(ctx context.Context, cli *clientv3.Client) (previous, error) {
	p := previous{entries: map[string]kindSets{}, remotes: map[string]bool{}}
	leases := map[clientv3.LeaseID]int{}
	for _, prefix := range []string{"cilium/cache/", wire.SyncedPrefix} {
		end := clientv3.GetPrefixRangeEnd(prefix)
		start, rev := prefix, int64(0)
		for {
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(loadPageKeys)}
			if prefix == wire.SyncedPrefix {
				opts = append(opts, clientv3.WithKeysOnly())
			}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			resp, err := cli.Get(ctx, start, opts...)
			if err != nil {
				return p, err
			}
			rev = resp.Header.Revision
			for _, kv := range resp.Kvs {
				lease := clientv3.LeaseID(kv.Lease)
				if p.record(string(kv.Key), prevEntry{sum: valueSum(kv.Value), lease: lease}) && lease != 0 {
					leases[lease]++
				}
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}
	for id, n := range leases {
		p.leases = append(p.leases, id)
		if p.most == 0 || n > leases[p.most] {
			p.most = id
		}
	}
	return p, nil
}

// add records key, of an unknown value on no lease, when it is the cache's;
// it reports whether it was.
func (p previous) add(key string) bool { return p.record(key, prevEntry{}) }

// record records key and its entry when it is the cache's; it reports
// whether it was.
func (p previous) record(key string, e prevEntry) bool {
	if rest, ok := strings.CutPrefix(key, agentsync.CacheStatusPrefix); ok {
		p.remotes[rest] = true
		return true
	}
	if rest, ok := strings.CutPrefix(key, wire.SyncedPrefix); ok {
		remote, canary, ok := strings.Cut(rest, "/")
		if ok && strings.HasPrefix(canary, "cilium/cache/") {
			p.remotes[remote] = true
			return true
		}
		return false
	}
	for _, k := range wire.Kinds {
		base := agentsync.CacheListPrefix(k, "x")
		base = base[:strings.Index(base, "/x/")+1] // cilium/cache/<kind>/v1/
		rest, ok := strings.CutPrefix(key, base)
		if !ok {
			continue
		}
		remote, _, ok := strings.Cut(rest, "/")
		if !ok || !strings.HasPrefix(key, agentsync.CacheListPrefix(k, remote)) {
			return false
		}
		p.remotes[remote] = true
		if p.entries[remote] == nil {
			p.entries[remote] = kindSets{}
		}
		if p.entries[remote][k] == nil {
			p.entries[remote][k] = map[string]prevEntry{}
		}
		p.entries[remote][k][key] = e
		return true
	}
	return false
}
