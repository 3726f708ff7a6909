package kvstoremesh

import (
	"context"
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
}

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

// loadPrevious reads the keys (not the values) under cilium/cache/ and the
// cache's canaries, page by page at one revision.
func loadPrevious(ctx context.Context, cli *clientv3.Client) (previous, error) {
	p := previous{entries: map[string]kindSets{}, remotes: map[string]bool{}}
	leases := map[clientv3.LeaseID]bool{}
	for _, prefix := range []string{"cilium/cache/", wire.SyncedPrefix} {
		end := clientv3.GetPrefixRangeEnd(prefix)
		start, rev := prefix, int64(0)
		for {
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(loadPageKeys)}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			resp, err := cli.Get(ctx, start, opts...)
			if err != nil {
				return p, err
			}
			rev = resp.Header.Revision
			for _, kv := range resp.Kvs {
				if p.add(string(kv.Key)) && kv.Lease != 0 {
					leases[clientv3.LeaseID(kv.Lease)] = true
				}
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}
	for id := range leases {
		p.leases = append(p.leases, id)
	}
	return p, nil
}

// add records key when it is the cache's; it reports whether it was.
func (p previous) add(key string) bool {
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
			p.entries[remote][k] = map[string]struct{}{}
		}
		p.entries[remote][k][key] = struct{}{}
		return true
	}
	return false
}
