package agentsync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/clustermesh/clustermesh/internal/loglimit"
	"github.com/clustermesh/clustermesh/merge"
	"github.com/clustermesh/clustermesh/wire"
)

// Errors that end a session with a remote (the remote then reconnects).
var (
	// ErrClusterChanged: answers came from another etcd than the one the
	// session was pinned to (a restarted store or another replica behind a
	// load balancer). The session resyncs from scratch.
	ErrClusterChanged = errors.New("remote etcd cluster changed")
	// ErrClusterIDConflict: the remote's cluster id is the local cluster's or
	// another connected remote's.
	ErrClusterIDConflict = errors.New("cluster id conflict")
	// ErrOverlapsLocal: a remote's ipcache entry overlaps a local pod CIDR or
	// node IP; it is rejected.
	ErrOverlapsLocal = errors.New("overlaps the local cluster's addresses")
	// errCompacted: the watch fell behind a compaction; relist.
	errCompacted = errors.New("watch revision compacted")
)

// sink is where a remote's stores put what they accepted: the merge. The
// stores call it while their kind's lock is held (lock order: kindState.mu,
// then the merge's lock, then the datapath's). The kernel write happens on
// the list or watch goroutine that received the entries, within that lock:
// one datapath batch per page or watch response, no queue between them
// (a reconcile loop would add a hand-over to every change's propagation;
// sync.propagation.p99_ratio in docs/benchmarks.md is the figure it keeps).
type sink interface {
	SetIPs(cluster uint16, updates []merge.IPUpdate)
	SetRemoteService(cluster string, n merge.ServiceName, rs *merge.RemoteService)
	SetNodeRanges(cluster uint16, removed, added []netip.Prefix)
	OverlapsLocal(p netip.Prefix) bool
}

// remote is the agent's connection to one remote cluster: it reconnects
// with backoff and, on every connection, waits for the cluster config and
// the canaries, then lists and watches each kind with mark-and-sweep. It
// keeps everything it learned across disconnects; only stop(drain) removes
// it.
type remote struct {
	name  string
	self  bool // the local cluster's own apiserver (see local.go)
	cfg   RemoteConfig
	raw   []byte // the config file as read, to notice changes
	agent *Agent
	log   *slog.Logger

	// What the stores hand accepted entries to — receive, then decide: the
	// merge (sink), the policy's identity observer, the nodes-changed
	// signal. Stores reach nothing else of the agent.
	out          sink
	identities   IdentityObserver
	nodesChanged func()

	cancel context.CancelFunc
	done   chan struct{}

	// Lock order: a kindState's mu before mu (stores report rejections and
	// read the cluster while their kind's lock is held).
	mu     sync.Mutex
	status RemoteStatus // guarded by mu
	cur    wire.Cluster // guarded by mu; the cluster as its config says, set per session
	// rejectLog limits rejection logging per reason (rejectReason's few
	// values; guarded by mu).
	rejectLog *loglimit.Keyed
	kinds     [4]*kindState
	// noServices: the current session's remote exports its services only
	// as endpoint slices, so its services are not read (see exports.go).
	noServices atomic.Bool
	// countedHook, in tests, runs in snapshot once the counts are read,
	// before the rest of the status is.
	countedHook func()
}

// cluster returns the remote's validated name, id and mesh size.
func (r *remote) cluster() wire.Cluster {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

func newRemote(a *Agent, name string, cfg RemoteConfig, raw []byte) *remote {
	r := &remote{name: name, self: name == a.cfg.ClusterName, cfg: cfg, raw: raw, agent: a, log: a.log.With("remote", name), done: make(chan struct{}),
		out: a.merger, identities: a.cfg.Identities, nodesChanged: func() { a.nodesDirty.Store(true) },
		rejectLog: loglimit.New(rejectLogEvery)}
	r.status = RemoteStatus{Name: name, EtcdEndpoints: cfg.Endpoints, Rejected: map[string]uint64{}, Synced: map[string]bool{}}
	for _, k := range wire.Kinds {
		r.kinds[k] = newKindState(r, k)
	}
	return r
}

// start runs the remote until stop.
func (r *remote) start(ctx context.Context) {
	ctx, r.cancel = context.WithCancel(ctx)
	go func() {
		defer close(r.done)
		r.run(ctx)
	}()
}

// stop ends the connection and waits for it; with drain, everything the
// remote contributed leaves the datapath and its cluster id is released.
func (r *remote) stop(drain bool) {
	r.cancel()
	<-r.done
	if drain {
		r.drain(r.clusterID())
		r.log.Info("remote drained")
	}
}

// drain removes from the datapath everything the remote said under
// cluster id, forgets it, and releases the id.
func (r *remote) drain(id uint16) {
	r.agent.merger.DropCluster(r.name, id)
	if !r.self {
		r.agent.release(r.name)
	}
	for _, ks := range r.kinds {
		ks.clear()
	}
	if f := r.agent.cfg.Forward; f != nil {
		f.Drained(r.name)
	}
}

func (r *remote) run(ctx context.Context) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = r.agent.cfg.BackoffInitial
	bo.MaxInterval = r.agent.cfg.BackoffMax
	bo.RandomizationFactor = 0.5
	bo.MaxElapsedTime = 0 // never give up
	bo.Reset()
	downSince, revoked := time.Now(), false
	for {
		wasReady, err := r.session(ctx)
		if ctx.Err() != nil {
			r.setDisconnected(nil)
			return
		}
		r.setDisconnected(err)
		r.log.Warn("remote session ended, keeping its last state and retrying", "err", err)
		if wasReady {
			bo.Reset()
			downSince, revoked = time.Now(), false
		}
		wait := bo.NextBackOff()
		if ttl := r.agent.cfg.RemoteStateTTL; ttl > 0 && !revoked {
			switch left := time.Until(downSince.Add(ttl)); {
			case left <= 0:
				r.revokeServices(ttl)
				revoked = true
			case left < wait:
				wait = left
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// revokeServices withdraws the remote's service backends after it was
// unreachable for ttl. Its ipcache entries and identities stay; the next
// complete sync restores the services.
func (r *remote) revokeServices(ttl time.Duration) {
	r.log.Warn("remote unreachable longer than the remote state TTL: revoking its service backends (ipcache kept)", "ttl", ttl)
	r.agent.merger.DropServices(r.name)
	r.mu.Lock()
	r.status.ServicesRevoked = true
	r.mu.Unlock()
}

// session is one connection: it returns why it ended and whether it had
// become ready (fully synced) before.
func (r *remote) session(ctx context.Context) (bool, error) {
	tlsCfg, err := r.cfg.TLS()
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: r.cfg.Endpoints, TLS: tlsCfg, Context: ctx, Logger: zap.NewNop(),
		DialTimeout: r.agent.cfg.ProbeTimeout, DialKeepAliveTime: 5 * time.Second, DialKeepAliveTimeout: r.agent.cfg.ProbeTimeout,
		MaxCallRecvMsgSize: maxResponseBytes(r.agent.cfg.ListPageBytes),
	})
	if err != nil {
		return false, r.explain(err)
	}
	defer cli.Close()

	pin, err := r.clusterConfig(ctx, cli)
	if err != nil {
		return false, err
	}
	if err := r.admit(pin.cluster); err != nil {
		return false, err
	}
	r.setConnected(pin.cluster, pin.etcdID, pin.layout)
	r.setExportMode(pin.exports)
	if f := r.agent.cfg.Forward; f != nil {
		f.Connected(r.name, pin.raw)
	}
	r.log.Info("connected", "clusterID", pin.cluster.ID, "etcdClusterID", formatID(pin.etcdID))

	errc := make(chan error, len(wire.Kinds)+1)
	var wg sync.WaitGroup
	for _, k := range r.watchedKinds() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- r.kinds[k].run(ctx, cli, pin.cluster, pin.config.Capabilities.SyncedCanaries, pin.etcdID, pin.layout)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		errc <- r.probe(ctx, cli, pin)
	}()
	err = <-errc
	cancel()
	wg.Wait()
	return r.isReady(), err
}

// admit reserves the remote's cluster id. A remote that comes back with
// another id than it had is drained first (nothing it said under the old id
// is valid any more), then admitted under the new one.
func (r *remote) admit(c wire.Cluster) error {
	if r.self {
		return r.admitSelf(c)
	}
	if prev := r.agent.reservedID(r.name); prev != 0 && prev != c.ID {
		r.log.Warn("remote changed its cluster id: draining it before re-admission", "from", prev, "to", c.ID)
		r.drain(uint16(prev))
	}
	return r.agent.reserve(r.name, c.ID)
}

// sessionPin is what a session holds the remote to: its validated config
// (and the exact bytes it came as) and the etcd cluster id that served it.
type sessionPin struct {
	cluster wire.Cluster
	config  wire.ClusterConfig
	raw     []byte
	etcdID  uint64
	exports wire.EndpointSlicesExportMode
	// layout: the remote's own state, or a cache's copy of it
	// (cachelayout.go).
	layout layout
}

// clusterConfig waits for and validates the remote's cluster config, and
// pins the etcd cluster id it came from. It polls (every ProbeInterval)
// rather than watches: a store that restarted may be behind any revision a
// watch would start from.
func (r *remote) clusterConfig(ctx context.Context, cli *clientv3.Client) (sessionPin, error) {
	key := wire.ClusterConfigKey(r.name)
	t := time.NewTicker(r.agent.cfg.ProbeInterval)
	defer t.Stop()
	for {
		gctx, cancel := context.WithTimeout(ctx, r.agent.cfg.ProbeTimeout)
		resp, err := cli.Get(gctx, key)
		cancel()
		if err != nil {
			return sessionPin{}, r.explain(err)
		}
		if len(resp.Kvs) == 1 {
			raw := resp.Kvs[0].Value
			c, cfg, err := wire.DecodeClusterConfig(r.name, r.agent.cfg.MaxConnectedClusters, raw)
			if err != nil {
				r.reject(err)
				return sessionPin{}, fmt.Errorf("reading the cluster config of remote %s: %w", r.name, err)
			}
			if cfg.Capabilities.Cached && r.agent.cfg.Forward != nil {
				return sessionPin{}, fmt.Errorf("remote %s: %w: it serves its state from a kvstoremesh cache (capabilities.cached); a cache reads each remote's own mesh apiserver: point the config at it",
					r.name, wire.ErrIncompatibleConfig)
			}
			exports, err := wire.DecodeEndpointSlicesExportMode(raw)
			if err != nil { // DecodeClusterConfig checked it
				return sessionPin{}, fmt.Errorf("reading the cluster config of remote %s: %w", r.name, err)
			}
			return sessionPin{cluster: c, config: cfg, raw: raw, etcdID: resp.Header.ClusterId, exports: exports,
				layout: r.layoutFor(cfg)}, nil
		}
		r.setError(fmt.Errorf("remote %s has not published %s yet: waiting", r.name, key))
		select {
		case <-ctx.Done():
			return sessionPin{}, ctx.Err()
		case <-t.C:
		}
	}
}

// probe reads the heartbeat and the cluster config every ProbeInterval, in
// one transaction. It ends the session when the remote does not answer,
// when the answer comes from another etcd or from a store whose revision
// went backwards (a restarted store), or when the cluster config changed.
func (r *remote) probe(ctx context.Context, cli *clientv3.Client, pin sessionPin) error {
	t := time.NewTicker(r.agent.cfg.ProbeInterval)
	defer t.Stop()
	var lastRev int64
	for {
		gctx, cancel := context.WithTimeout(ctx, r.agent.cfg.ProbeTimeout)
		ops := []clientv3.Op{clientv3.OpGet(wire.HeartbeatKey), clientv3.OpGet(wire.ClusterConfigKey(r.name))}
		if pin.layout.cached {
			ops = append(ops, clientv3.OpGet(CacheStatusKey(r.name)))
		}
		resp, err := cli.Txn(gctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("probing remote %s: %w", r.name, r.explain(err))
		}
		if err := r.checkEtcd(resp.Header.ClusterId, pin.etcdID); err != nil {
			return err
		}
		if resp.Header.Revision < lastRev {
			return fmt.Errorf("remote %s: %w (store revision went back from %d to %d): resyncing",
				r.name, ErrClusterChanged, lastRev, resp.Header.Revision)
		}
		lastRev = resp.Header.Revision
		hb, cfg := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
		if len(cfg) != 1 || !bytes.Equal(cfg[0].Value, pin.raw) {
			return fmt.Errorf("remote %s: its cluster config changed: resyncing", r.name)
		}
		if pin.layout.cached {
			r.setViaCache(resp.Responses[2].GetResponseRange().Kvs)
		} else if len(hb) == 1 {
			if at, err := time.Parse(time.RFC3339Nano, string(hb[0].Value)); err == nil {
				r.mu.Lock()
				r.status.LastHeartbeat = at
				r.mu.Unlock()
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// checkEtcd fails when an answer came from another etcd than the pinned one.
func (r *remote) checkEtcd(got, pinned uint64) error {
	if got != pinned {
		return fmt.Errorf("remote %s: %w (etcd cluster id %x, pinned %x): resyncing", r.name, ErrClusterChanged, got, pinned)
	}
	return nil
}

// explain turns etcd client errors into what an operator can act on.
func (r *remote) explain(err error) error {
	local := r.agent.cfg.ClusterName
	switch {
	case errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrUserEmpty),
		errors.Is(err, rpctypes.ErrAuthFailed), strings.Contains(err.Error(), "user name not found"):
		return fmt.Errorf("remote %s refuses user remote-%s: %w (add %s as a peer of %s: --peer %s on its clustermesh apiserver, "+
			"or, when %s is a Cilium cluster, %s in its clustermesh.config.clusters so that Cilium's users management creates the user)",
			r.name, local, err, local, r.name, local, r.name, local)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("remote %s at %s: no answer within %s: %w (is the endpoint reachable, and is this cluster's certificate signed by the mesh CA the peer trusts?)",
			r.name, strings.Join(r.cfg.Endpoints, ","), r.agent.cfg.ProbeTimeout, err)
	}
	return fmt.Errorf("remote %s: %w", r.name, err)
}
