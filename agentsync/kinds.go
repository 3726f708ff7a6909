package agentsync

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/wire"
)

// kindState is one remote's entries of one kind and their list+watch. The
// entries survive disconnects; a (re)list marks them all, un-marks what it
// sees, and only after the list completed removes what stayed marked.
//
// entries is written only by the kind's own goroutine (one session at a
// time) and read for counts; it has its own lock because a kindState moves
// to a new remote when the remote's config file changes.
type kindState struct {
	r    *remote
	kind wire.Kind

	mu      sync.Mutex
	entries map[string]any // guarded by mu; key → what a delete needs
}

// count returns the number of entries.
func (ks *kindState) count() int {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	return len(ks.entries)
}

// clear forgets every entry (after the merger dropped the cluster).
func (ks *kindState) clear() {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.entries = map[string]any{}
}

func newKindState(r *remote, k wire.Kind) *kindState {
	return &kindState{r: r, kind: k, entries: map[string]any{}}
}

// run waits for the kind's canary, then lists and watches until the session
// ends; a compaction relists within the session.
func (ks *kindState) run(ctx context.Context, cli *clientv3.Client, c wire.Cluster, canaries bool, etcdID uint64) error {
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
		ks.r.setSynced(ks.kind)
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
// sweep entries that are merely not yet republished.
func (ks *kindState) waitCanary(ctx context.Context, cli *clientv3.Client, cluster string, etcdID uint64) error {
	key := wire.SyncedKey(cluster, ks.kind)
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
	ks.r.log.Info("waiting for synced canary", "kind", ks.kind)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range cli.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1)) {
		if err := wr.Err(); err != nil {
			return ks.r.explain(err)
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.PUT {
				return nil
			}
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("agentsync: remote %s: canary watch closed", ks.r.name)
}

// list reads the kind's prefix page by page at one revision, applies every
// entry, then sweeps what was not seen. It returns the list's revision.
func (ks *kindState) list(ctx context.Context, cli *clientv3.Client, c wire.Cluster, etcdID uint64) (int64, error) {
	prefix := ks.kind.ListPrefix(c.Name)
	end := clientv3.GetPrefixRangeEnd(prefix)
	seen := make(map[string]struct{}, ks.count())
	start, rev := prefix, int64(0)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(ks.r.agent.cfg.ListPageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, start, opts...)
		if errors.Is(err, rpctypes.ErrCompacted) {
			seen, start, rev = make(map[string]struct{}, len(seen)), prefix, 0 // restart the list
			continue
		}
		if err != nil {
			return 0, ks.r.explain(err)
		}
		if err := ks.r.checkEtcd(resp.Header.ClusterId, etcdID); err != nil {
			return 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			seen[string(kv.Key)] = struct{}{}
			ks.apply(c, string(kv.Key), kv.Value)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	swept := 0
	for key := range ks.snapshotKeys() {
		if _, ok := seen[key]; !ok {
			ks.remove(c, key)
			swept++
		}
	}
	if swept > 0 {
		ks.r.log.Info("swept entries gone from the remote", "kind", ks.kind, "count", swept)
	}
	return rev, nil
}

// watch applies every change after rev until the session ends.
func (ks *kindState) watch(ctx context.Context, cli *clientv3.Client, c wire.Cluster, etcdID uint64, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	prefix := ks.kind.ListPrefix(c.Name)
	for wr := range cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev)) {
		if wr.CompactRevision != 0 {
			return errCompacted
		}
		if err := wr.Err(); err != nil {
			return ks.r.explain(err)
		}
		if err := ks.r.checkEtcd(wr.Header.ClusterId, etcdID); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			switch ev.Type {
			case mvccpb.PUT:
				ks.apply(c, string(ev.Kv.Key), ev.Kv.Value)
			case mvccpb.DELETE:
				ks.remove(c, string(ev.Kv.Key))
			}
		}
		ks.r.eventSeen()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("agentsync: remote %s: %s watch closed", ks.r.name, ks.kind)
}

func (ks *kindState) snapshotKeys() map[string]struct{} {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	keys := make(map[string]struct{}, len(ks.entries))
	for k := range ks.entries {
		keys[k] = struct{}{}
	}
	return keys
}

// apply decodes and validates one entry and hands it to the merger. A
// rejected entry is counted and logged; a previously valid value for the key
// stays in force.
func (ks *kindState) apply(c wire.Cluster, key string, value []byte) {
	v, err := decode(c, ks.kind, key, value)
	if err != nil {
		ks.r.reject(err)
		return
	}
	m := ks.r.agent.merger
	switch e := v.(type) {
	case *wire.IPIdentityPair:
		if m.overlapsLocal(e.Prefix()) {
			ks.r.reject(fmt.Errorf("agentsync: ipcache %q: %s %w", key, e.Prefix(), ErrOverlapsLocal))
			return
		}
		m.setIP(c.Name, e.Prefix(), &ipClaim{clusterID: uint16(c.ID), entry: datapath.IPCacheEntry{
			Identity: e.ID, TunnelEndpoint: e.HostIP, ClusterID: uint16(c.ID)}})
		v = e.Prefix() // all a later delete needs
	case *wire.ClusterService:
		m.setRemoteService(c.Name, svcName{e.Namespace, e.Name}, toRemoteService(c, e))
		v = svcName{e.Namespace, e.Name}
	}
	ks.mu.Lock()
	ks.entries[key] = v
	ks.mu.Unlock()
}

// remove forgets key and takes it out of the merged state.
func (ks *kindState) remove(c wire.Cluster, key string) {
	ks.mu.Lock()
	v, ok := ks.entries[key]
	delete(ks.entries, key)
	ks.mu.Unlock()
	if !ok {
		return
	}
	m := ks.r.agent.merger
	switch e := v.(type) {
	case netip.Prefix:
		m.setIP(c.Name, e, nil)
	case svcName:
		m.setRemoteService(c.Name, e, nil)
	}
}

func decode(c wire.Cluster, k wire.Kind, key string, value []byte) (any, error) {
	switch k {
	case wire.Nodes:
		return wire.DecodeNode(c, key, value)
	case wire.Identities:
		id, err := wire.DecodeIdentity(c, key, value)
		return id.Labels, err
	case wire.IPCache:
		return wire.DecodeIPIdentityPair(c, key, value)
	case wire.Services:
		return wire.DecodeService(c, key, value)
	}
	return nil, fmt.Errorf("agentsync: unknown kind %v", k)
}

// toRemoteService converts a remote's global service into backends per port
// name. A service the remote does not share contributes no backends.
func toRemoteService(c wire.Cluster, s *wire.ClusterService) *remoteService {
	rs := &remoteService{clusterID: uint16(c.ID), backends: map[string][]datapath.Backend{}}
	if !s.Shared {
		return rs
	}
	for ip, ports := range s.Backends {
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			continue // DecodeService already rejected unparseable addresses
		}
		for portName, l4 := range ports {
			proto, err := datapath.ParseProtocol(l4.Protocol)
			if err != nil {
				continue
			}
			rs.backends[portName] = append(rs.backends[portName], datapath.Backend{
				Addr: addr.Unmap(), Port: l4.Port, Protocol: proto, ClusterID: uint16(c.ID)})
		}
	}
	return rs
}

// eventSeen records the time of the last applied list or watch event.
func (r *remote) eventSeen() {
	r.mu.Lock()
	r.status.LastEvent = time.Now()
	r.mu.Unlock()
}
