package agentsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

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
	// errCompacted: the watch fell behind a compaction; relist.
	errCompacted = errors.New("watch revision compacted")
)

// remote is the agent's connection to one remote cluster: it reconnects
// with backoff and, on every connection, waits for the cluster config and
// the canaries, then lists and watches each kind with mark-and-sweep. It
// keeps everything it learned across disconnects; only stop(drain) removes
// it.
type remote struct {
	name  string
	cfg   RemoteConfig
	raw   []byte // the config file as read, to notice changes
	agent *Agent
	log   *slog.Logger

	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	status RemoteStatus // guarded by mu
	kinds  [4]*kindState
}

func newRemote(a *Agent, name string, cfg RemoteConfig, raw []byte) *remote {
	r := &remote{name: name, cfg: cfg, raw: raw, agent: a, log: a.log.With("remote", name), done: make(chan struct{})}
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
		r.agent.merger.dropCluster(r.name)
		r.agent.release(r.name)
		r.log.Info("remote drained")
	}
}

func (r *remote) run(ctx context.Context) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = r.agent.cfg.BackoffInitial
	bo.MaxInterval = r.agent.cfg.BackoffMax
	bo.RandomizationFactor = 0.5
	bo.MaxElapsedTime = 0 // never give up
	bo.Reset()
	for {
		wasReady, err := r.session(ctx)
		if ctx.Err() != nil {
			r.setDisconnected(nil)
			return
		}
		r.setDisconnected(err)
		r.log.Warn("remote connection lost, keeping its last state and reconnecting", "err", err)
		if wasReady {
			bo.Reset()
		}
		t := time.NewTimer(bo.NextBackOff())
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
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
	})
	if err != nil {
		return false, r.explain(err)
	}
	defer cli.Close()

	cluster, cfg, etcdID, err := r.clusterConfig(ctx, cli)
	if err != nil {
		return false, err
	}
	if err := r.agent.reserve(r.name, cluster.ID); err != nil {
		return false, err
	}
	r.setConnected(cluster, etcdID)
	r.log.Info("connected", "clusterID", cluster.ID, "etcdClusterID", fmt.Sprintf("%x", etcdID))

	errc := make(chan error, len(wire.Kinds)+1)
	var wg sync.WaitGroup
	for _, k := range wire.Kinds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- r.kinds[k].run(ctx, cli, cluster, cfg.Capabilities.SyncedCanaries, etcdID)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		errc <- r.probe(ctx, cli, etcdID)
	}()
	err = <-errc
	cancel()
	wg.Wait()
	return r.isReady(), err
}

// clusterConfig waits for and validates the remote's cluster config, and
// pins the etcd cluster id it came from.
func (r *remote) clusterConfig(ctx context.Context, cli *clientv3.Client) (wire.Cluster, wire.ClusterConfig, uint64, error) {
	key := wire.ClusterConfigKey(r.name)
	for {
		gctx, cancel := context.WithTimeout(ctx, r.agent.cfg.ProbeTimeout)
		resp, err := cli.Get(gctx, key)
		cancel()
		if err != nil {
			return wire.Cluster{}, wire.ClusterConfig{}, 0, r.explain(err)
		}
		if len(resp.Kvs) == 1 {
			c, cfg, err := wire.DecodeClusterConfig(r.name, r.agent.cfg.MaxConnectedClusters, resp.Kvs[0].Value)
			if err != nil {
				r.reject(err)
				return c, cfg, 0, fmt.Errorf("agentsync: remote %s: %w", r.name, err)
			}
			return c, cfg, resp.Header.ClusterId, nil
		}
		r.setError(fmt.Errorf("agentsync: remote %s has not published %s yet: waiting", r.name, key))
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := cli.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1))
		select {
		case <-ctx.Done():
		case <-wch:
		}
		wcancel()
		if ctx.Err() != nil {
			return wire.Cluster{}, wire.ClusterConfig{}, 0, ctx.Err()
		}
	}
}

// probe reads the heartbeat every ProbeInterval: a failed read ends the
// session (the remote is unreachable), an answer from another etcd too.
func (r *remote) probe(ctx context.Context, cli *clientv3.Client, etcdID uint64) error {
	t := time.NewTicker(r.agent.cfg.ProbeInterval)
	defer t.Stop()
	for {
		gctx, cancel := context.WithTimeout(ctx, r.agent.cfg.ProbeTimeout)
		resp, err := cli.Get(gctx, wire.HeartbeatKey)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("agentsync: remote %s unreachable: %w", r.name, r.explain(err))
		}
		if err := r.checkEtcd(resp.Header.ClusterId, etcdID); err != nil {
			return err
		}
		if len(resp.Kvs) == 1 {
			if hb, err := time.Parse(time.RFC3339Nano, string(resp.Kvs[0].Value)); err == nil {
				r.mu.Lock()
				r.status.LastHeartbeat = hb
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
		return fmt.Errorf("agentsync: remote %s: %w (etcd cluster id %x, pinned %x): resyncing", r.name, ErrClusterChanged, got, pinned)
	}
	return nil
}

// explain turns etcd client errors into what an operator can act on.
func (r *remote) explain(err error) error {
	local := r.agent.cfg.ClusterName
	switch {
	case errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrUserEmpty),
		errors.Is(err, rpctypes.ErrAuthFailed), strings.Contains(err.Error(), "user name not found"):
		return fmt.Errorf("agentsync: remote %s refuses user remote-%s: %w (add %s as a peer on %s's apiserver: --peer %s)",
			r.name, local, err, local, r.name, local)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("agentsync: remote %s at %s: no answer within %s: %w (is the endpoint reachable, and is this cluster's certificate signed by the mesh CA the peer trusts?)",
			r.name, strings.Join(r.cfg.Endpoints, ","), r.agent.cfg.ProbeTimeout, err)
	}
	return fmt.Errorf("agentsync: remote %s: %w", r.name, err)
}
