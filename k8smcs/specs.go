package k8smcs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/internal/loglimit"
	"github.com/clustermesh/clustermesh/wire"
)

// The remote clusters' export specs are read here, beside the agent that
// reads their other kinds: one etcd client per remote config of ConfigDir
// (the same files, certificates and user as the agent's), which waits for
// the kind's synced canary, lists cilium/state/serviceexports/v1/<cluster>/
// at one revision and watches from there. A remote's specs are kept across
// disconnects (as the agent keeps its backends) and forgotten when its
// config leaves ConfigDir. A remote whose cluster config does not say
// capabilities.serviceExportsEnabled exports none.

// specReader reads every remote's export specs.
type specReader struct {
	dir, local   string
	rescan       time.Duration
	probeTimeout time.Duration
	log          *slog.Logger
	changed      func()
	metrics      *metrics
	rejectLog    *loglimit.Keyed

	mu      sync.Mutex
	remotes map[string]*specRemote // guarded by mu
}

// specRemote is one remote's reader and what it read.
type specRemote struct {
	name   string
	raw    []byte
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	specs   map[string]*wire.ServiceExportSpec // key → spec; guarded by mu
	status  RemoteStatus                       // guarded by mu
	listed  bool                               // guarded by mu; listed once since the reader started
	started time.Time
}

// RemoteStatus is what the controller knows of one remote's exports.
type RemoteStatus struct {
	Name      string `json:"name"`
	Connected bool   `json:"connected"`
	Synced    bool   `json:"synced"`
	// Enabled: the remote's cluster config says it publishes exports.
	Enabled   bool   `json:"enabled"`
	Exports   int    `json:"exports"`
	Rejected  uint64 `json:"rejected"`
	LastError string `json:"lastError,omitempty"`
}

func newSpecReader(dir, local string, log *slog.Logger, m *metrics, changed func()) *specReader {
	return &specReader{dir: dir, local: local, rescan: time.Second, probeTimeout: 5 * time.Second, log: log,
		changed: changed, metrics: m, rejectLog: loglimit.New(time.Minute), remotes: map[string]*specRemote{}}
}

// run follows ConfigDir until ctx ends, then stops every remote's reader.
func (sr *specReader) run(ctx context.Context) {
	t := time.NewTicker(sr.rescan)
	defer t.Stop()
	defer sr.stopAll()
	for {
		sr.scan(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// scan starts a reader per new or changed config, stops those whose config
// went (their specs with them).
func (sr *specReader) scan(ctx context.Context) {
	entries, err := os.ReadDir(sr.dir)
	if err != nil {
		sr.log.Warn("reading the remote configs for service exports", "dir", sr.dir, "error", err)
		return
	}
	present := map[string][]byte{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || name == sr.local {
			continue // hidden files (Kubernetes' ..data links); the local cluster's own apiserver
		}
		path := filepath.Join(sr.dir, name)
		if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		present[name] = raw
	}
	sr.mu.Lock()
	var stop []*specRemote
	for name, r := range sr.remotes {
		if raw, ok := present[name]; !ok || string(raw) != string(r.raw) {
			stop = append(stop, r)
			delete(sr.remotes, name)
		}
	}
	sr.mu.Unlock()
	for _, r := range stop {
		r.cancel()
		<-r.done
	}
	started := false
	for name, raw := range present {
		sr.mu.Lock()
		_, running := sr.remotes[name]
		sr.mu.Unlock()
		if running {
			continue
		}
		rc, err := agentsync.ParseRemoteConfig(name, filepath.Join(sr.dir, name), raw)
		if err != nil {
			logLimited(sr.rejectLog, "config "+name, func(uint64) {
				sr.log.Warn("remote config refused: its exports are not read", "remote", name, "error", err)
			})
			continue
		}
		rctx, cancel := context.WithCancel(ctx)
		r := &specRemote{name: name, raw: raw, cancel: cancel, done: make(chan struct{}), specs: map[string]*wire.ServiceExportSpec{},
			status: RemoteStatus{Name: name}, started: time.Now()}
		sr.mu.Lock()
		sr.remotes[name] = r
		sr.mu.Unlock()
		go func() {
			defer close(r.done)
			sr.follow(rctx, r, rc)
		}()
		started = true
	}
	if len(stop) > 0 || started {
		sr.changed()
	}
}

func (sr *specReader) stopAll() {
	sr.mu.Lock()
	rs := slices.Collect(maps.Values(sr.remotes))
	sr.remotes = map[string]*specRemote{}
	sr.mu.Unlock()
	for _, r := range rs {
		r.cancel()
		<-r.done
	}
}

// specs returns every remote's specs by cluster.
func (sr *specReader) specs() map[string][]*wire.ServiceExportSpec {
	sr.mu.Lock()
	rs := slices.Collect(maps.Values(sr.remotes))
	sr.mu.Unlock()
	out := map[string][]*wire.ServiceExportSpec{}
	for _, r := range rs {
		r.mu.Lock()
		out[r.name] = slices.Collect(maps.Values(r.specs))
		r.mu.Unlock()
	}
	return out
}

// statuses returns every remote's status, by name.
func (sr *specReader) statuses() []RemoteStatus {
	sr.mu.Lock()
	rs := slices.Collect(maps.Values(sr.remotes))
	sr.mu.Unlock()
	out := make([]RemoteStatus, 0, len(rs))
	for _, r := range rs {
		r.mu.Lock()
		st := r.status
		st.Exports = len(r.specs)
		r.mu.Unlock()
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b RemoteStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// follow reads r until ctx ends, reconnecting with backoff.
func (sr *specReader) follow(ctx context.Context, r *specRemote, rc agentsync.RemoteConfig) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 100*time.Millisecond, 10*time.Second, 0
	bo.Reset()
	for ctx.Err() == nil {
		err := sr.session(ctx, r, rc)
		r.mu.Lock()
		r.status.Connected, r.status.Synced = false, false
		if err != nil && ctx.Err() == nil {
			r.status.LastError = err.Error()
		}
		r.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		logLimited(sr.rejectLog, "session "+r.name, func(uint64) {
			sr.log.Info("reading a remote's service exports: reconnecting", "remote", r.name, "error", err)
		})
		select {
		case <-ctx.Done():
			return
		case <-time.After(bo.NextBackOff()):
		}
	}
}

// session is one connection to r: cluster config, canary, list, watch.
func (sr *specReader) session(ctx context.Context, r *specRemote, rc agentsync.RemoteConfig) error {
	tlsCfg, err := rc.TLS()
	if err != nil {
		return err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: rc.Endpoints, TLS: tlsCfg, Context: ctx, Logger: zap.NewNop(),
		DialTimeout: sr.probeTimeout, DialKeepAliveTime: 5 * time.Second, DialKeepAliveTimeout: sr.probeTimeout})
	if err != nil {
		return fmt.Errorf("connecting to remote %s: %w", r.name, err)
	}
	defer cli.Close()
	c, err := sr.clusterConfig(ctx, cli, r)
	if err != nil {
		return err
	}
	if err := sr.waitCanary(ctx, cli, c); err != nil {
		return err
	}
	rev, etcdID, err := sr.list(ctx, cli, r, c)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	probe := make(chan error, 1) // one send, never blocked
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		probe <- sr.probe(wctx, cli, etcdID)
	}()
	err = sr.watch(wctx, cli, r, c, rev+1, probe)
	cancel()
	wg.Wait()
	return err
}

// probeEvery is how often a session checks that the remote's etcd is the
// one it listed: a restarted mesh apiserver has a new, empty etcd, whose
// revisions a watch resumed on it would wait for.
const probeEvery = time.Second

// errEtcdChanged: the remote's etcd is not the one the session listed.
var errEtcdChanged = errors.New("the remote's etcd changed (a restarted apiserver): listing again")

// probe reads the heartbeat every probeEvery until ctx ends; it returns
// the first failure, or errEtcdChanged when another etcd answers.
func (sr *specReader) probe(ctx context.Context, cli *clientv3.Client, etcdID uint64) error {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		gctx, cancel := context.WithTimeout(ctx, sr.probeTimeout)
		resp, err := cli.Get(gctx, wire.HeartbeatKey)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			return fmt.Errorf("probing the remote: %w", err)
		case resp.Header.ClusterId != etcdID:
			return errEtcdChanged
		}
	}
}

// clusterConfig reads the remote's cluster config; with no exports
// enabled, it forgets the remote's specs and waits for a change of it.
func (sr *specReader) clusterConfig(ctx context.Context, cli *clientv3.Client, r *specRemote) (wire.Cluster, error) {
	key := wire.ClusterConfigKey(r.name)
	for {
		gctx, cancel := context.WithTimeout(ctx, sr.probeTimeout)
		resp, err := cli.Get(gctx, key)
		cancel()
		if err != nil {
			return wire.Cluster{}, fmt.Errorf("reading the cluster config of remote %s: %w", r.name, err)
		}
		r.mu.Lock()
		r.status.Connected = true
		r.mu.Unlock()
		if len(resp.Kvs) == 1 {
			c, cfg, err := wire.DecodeClusterConfig(r.name, meshSize(resp.Kvs[0].Value), resp.Kvs[0].Value)
			if err != nil {
				return wire.Cluster{}, fmt.Errorf("reading the cluster config of remote %s: %w", r.name, err)
			}
			enabled := cfg.Capabilities.ServiceExportsEnabled != nil && *cfg.Capabilities.ServiceExportsEnabled
			r.mu.Lock()
			r.status.Enabled = enabled
			r.mu.Unlock()
			if enabled {
				return c, nil
			}
			sr.replace(r, nil)
		}
		// Not there yet, or no exports: look again later.
		select {
		case <-ctx.Done():
			return wire.Cluster{}, ctx.Err()
		case <-time.After(5 * time.Second):
		}
	}
}

// waitCanary waits for the kind's synced canary.
func (sr *specReader) waitCanary(ctx context.Context, cli *clientv3.Client, c wire.Cluster) error {
	key := wire.SyncedKey(c.Name, wire.ServiceExports)
	for {
		resp, err := cli.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("reading the canary %s: %w", key, err)
		}
		if len(resp.Kvs) > 0 {
			return nil
		}
		wctx, cancel := context.WithCancel(ctx)
		wch := cli.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1))
		select {
		case <-ctx.Done():
		case <-wch:
		case <-time.After(10 * time.Second):
		}
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// list reads every spec of c at one revision and replaces r's; it returns
// the revision and the etcd cluster id that answered.
func (sr *specReader) list(ctx context.Context, cli *clientv3.Client, r *specRemote, c wire.Cluster) (int64, uint64, error) {
	resp, err := cli.Get(ctx, wire.ServiceExports.ListPrefix(c.Name), clientv3.WithPrefix())
	if err != nil {
		return 0, 0, fmt.Errorf("listing the service exports of remote %s: %w", c.Name, err)
	}
	specs := map[string]*wire.ServiceExportSpec{}
	for _, kv := range resp.Kvs {
		if s := sr.decode(c, string(kv.Key), kv.Value); s != nil {
			specs[string(kv.Key)] = s
		}
	}
	sr.replace(r, specs)
	r.mu.Lock()
	r.status.Synced, r.status.LastError, r.listed = true, "", true
	r.mu.Unlock()
	return resp.Header.Revision, resp.Header.ClusterId, nil
}

// watch applies the changes of c's specs from rev until ctx ends, the
// watch fails or probe says the remote changed.
func (sr *specReader) watch(ctx context.Context, cli *clientv3.Client, r *specRemote, c wire.Cluster, rev int64, probe <-chan error) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := cli.Watch(wctx, wire.ServiceExports.ListPrefix(c.Name), clientv3.WithPrefix(), clientv3.WithRev(rev))
	for {
		var wr clientv3.WatchResponse
		var ok bool
		select {
		case err := <-probe:
			if err == nil {
				return nil // ctx ended
			}
			return err
		case wr, ok = <-wch:
		}
		if !ok {
			break
		}
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watching the service exports of remote %s: %w", c.Name, err)
		}
		r.mu.Lock()
		for _, ev := range wr.Events {
			key := string(ev.Kv.Key)
			if ev.Type == clientv3.EventTypeDelete {
				delete(r.specs, key)
				continue
			}
			if s := sr.decode(c, key, ev.Kv.Value); s != nil {
				r.specs[key] = s
			} else {
				delete(r.specs, key) // an invalid update withdraws the export
			}
		}
		r.mu.Unlock()
		sr.changed()
	}
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("watching the service exports of remote %s: the watch closed", c.Name)
}

// decode returns the valid spec at key, or nil after counting and logging
// the rejection.
func (sr *specReader) decode(c wire.Cluster, key string, value []byte) *wire.ServiceExportSpec {
	s, err := wire.DecodeServiceExport(c, key, value)
	if err != nil {
		reason := wire.Reason(err)
		sr.metrics.rejected.WithLabelValues(reason).Inc()
		logLimited(sr.rejectLog, "reject "+reason, func(n uint64) {
			sr.log.Warn("a remote's service export was refused", "remote", c.Name, "key", key, "error", err, "refusedSinceLastLog", n)
		})
		return nil
	}
	return s
}

// replace sets r's specs and reports a change.
func (sr *specReader) replace(r *specRemote, specs map[string]*wire.ServiceExportSpec) {
	if specs == nil {
		specs = map[string]*wire.ServiceExportSpec{}
	}
	r.mu.Lock()
	r.specs = specs
	r.mu.Unlock()
	sr.changed()
}

// logLimited calls log when l allows key now, with how many were suppressed.
func logLimited(l *loglimit.Keyed, key string, log func(suppressed uint64)) {
	if ok, n := l.Allow(key, time.Now()); ok {
		log(n)
	}
}

// listGrace is how long an unreachable remote holds back the deletion of
// imports (allListed).
const listGrace = 2 * time.Minute

// allListed reports whether every remote that exports has been listed
// once since its reader started, or could not be for listGrace (remotes
// that do not export, or whose config is refused, do not hold it back).
func (sr *specReader) allListed() bool {
	sr.mu.Lock()
	rs := slices.Collect(maps.Values(sr.remotes))
	sr.mu.Unlock()
	for _, r := range rs {
		r.mu.Lock()
		ok := r.listed || (r.status.Connected && !r.status.Enabled) || time.Since(r.started) > listGrace
		r.mu.Unlock()
		if !ok {
			return false
		}
	}
	return true
}

// meshSize is the maxConnectedClusters a cluster config says (the default
// when it says none or does not parse, which DecodeClusterConfig reports):
// export specs carry no identities, so the reader takes the remote's size
// as its own.
func meshSize(value []byte) uint32 {
	var peek struct {
		Capabilities struct {
			MaxConnectedClusters uint32 `json:"maxConnectedClusters"`
		} `json:"capabilities"`
	}
	if json.Unmarshal(value, &peek) != nil || peek.Capabilities.MaxConnectedClusters == 0 {
		return wire.DefaultMaxConnectedClusters
	}
	return peek.Capabilities.MaxConnectedClusters
}
