// Package kvstoremesh is the remote-state cache of one cluster (Cilium's
// KVStoreMesh): it reads every remote cluster with the agent's own
// receiving side (agentsync with Config.Forward: sessions, cluster config
// and cluster-id pinning, canaries, list+watch, validation with the
// per-remote limits, mark-and-sweep) and writes what it accepted into its
// own cluster's etcd, in Cilium's cache layout (agentsync/cachelayout.go):
// the entries under cilium/cache/<kind>/v1/<remote>/, the remote's cluster
// config with capabilities.cached, a synced canary per remote and kind once
// that kind is fully written, and its session with each remote
// (cilium/cache/.status/<remote>). The agents of the cluster then read only
// their own cluster's etcd.
//
// A restart is no blackout: the previous run's entries stay (their lease
// kept alive; the lease most of them are on is adopted as the new run's,
// so that an entry listed again with the same value is not rewritten),
// each that changed is rewritten as its remote is listed again, and only
// after a remote's kind is fully listed again are the entries it no longer
// has deleted. Agents never see a removal of an entry that still exists.
package kvstoremesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/wire"
)

// Defaults of Config.
const (
	DefaultLeaseTTL = 15 * time.Minute
	// DefaultTxnOps and DefaultTxnBytes bound one write transaction, as
	// the apiserver's publisher bounds its own (its etcd accepts them).
	DefaultTxnOps   = 1024
	DefaultTxnBytes = 6 << 20
)

// Errors of the cache.
var (
	// ErrInvalidConfig is wrapped by every Config.Validate error.
	ErrInvalidConfig = errors.New("invalid kvstoremesh config")
	// ErrLeaseLost: the cache's lease expired or was revoked, and with it
	// everything it wrote; the cache stops (run it again: it rewrites
	// everything).
	ErrLeaseLost = errors.New("kvstoremesh lease lost")
)

// Config of a cache.
type Config struct {
	// Sync configures the reading side: ClusterName, ClusterID and
	// ConfigDir (one etcd client config per remote, as an agent's) are
	// required; timings and limits as an agent's. Forward, LocalSource and
	// Datapath are set by the cache.
	Sync agentsync.Config
	// Endpoints, CertFile, KeyFile and CAFile reach the cluster's own etcd
	// (its mesh apiserver) as a user that may write cilium/cache/,
	// cilium/cluster-config/ and cilium/synced/: admin-<cluster>.
	Endpoints                 []string
	CertFile, KeyFile, CAFile string
	LeaseTTL                  time.Duration
	TxnOps                    int
	TxnBytes                  int
	// StatusInterval is how often every remote's status is rewritten
	// (agentsync.CacheStatusInterval: agents count on it).
	StatusInterval time.Duration
	Logger         *slog.Logger
}

func (c *Config) withDefaults() {
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.TxnOps == 0 {
		c.TxnOps = DefaultTxnOps
	}
	if c.TxnBytes == 0 {
		c.TxnBytes = DefaultTxnBytes
	}
	if c.StatusInterval == 0 {
		c.StatusInterval = agentsync.CacheStatusInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate checks the config after defaults.
func (c *Config) Validate() error {
	switch {
	case len(c.Endpoints) == 0:
		return fmt.Errorf("kvstoremesh: %w: no endpoint of the cluster's own etcd", ErrInvalidConfig)
	case c.CertFile == "" || c.KeyFile == "" || c.CAFile == "":
		return fmt.Errorf("kvstoremesh: %w: the client certificate, its key and the CA of the cluster's own etcd are all required", ErrInvalidConfig)
	case c.LeaseTTL < 10*time.Second:
		return fmt.Errorf("kvstoremesh: %w: lease TTL %s is under 10s", ErrInvalidConfig, c.LeaseTTL)
	case c.TxnOps < 2 || c.TxnBytes < wire.MaxValueBytes+2*wire.MaxKeyBytes:
		return fmt.Errorf("kvstoremesh: %w: a transaction must hold at least two operations and the largest entry (%d bytes)", ErrInvalidConfig, wire.MaxValueBytes)
	case c.StatusInterval > agentsync.CacheStatusInterval:
		return fmt.Errorf("kvstoremesh: %w: status interval %s over %s: agents would think the cache down", ErrInvalidConfig, c.StatusInterval, agentsync.CacheStatusInterval)
	}
	return nil
}

// Cache is one cluster's remote-state cache. Create with New, run with Run;
// Status may be called at any time.
type Cache struct {
	cfg     Config
	log     *slog.Logger
	reader  *agentsync.Agent
	w       *writer
	running atomic.Bool
}

// New validates cfg and returns a cache that is not yet running.
func New(cfg Config) (*Cache, error) {
	cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Cache{cfg: cfg, log: cfg.Logger.With("component", "kvstoremesh", "cluster", cfg.Sync.ClusterName)}
	c.w = newWriter(cfg.TxnOps, cfg.TxnBytes, c.log)
	sync := cfg.Sync
	sync.Forward, sync.LocalSource, sync.Datapath = c.w, nil, nil
	if sync.Logger == nil {
		sync.Logger = cfg.Logger
	}
	r, err := agentsync.New(sync)
	if err != nil {
		return nil, fmt.Errorf("kvstoremesh: %w", err)
	}
	c.reader = r
	return c, nil
}

// Reader is the cache's reading side (its remotes' status, metrics).
func (c *Cache) Reader() *agentsync.Agent { return c.reader }

// Run caches every remote until ctx is done. It returns ErrLeaseLost when
// the lease went (and with it what the cache wrote).
func (c *Cache) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("kvstoremesh: Run called twice: create a new Cache")
	}
	tlsCfg, err := ca.ClientTLSConfig(c.cfg.CertFile, c.cfg.KeyFile, c.cfg.CAFile)
	if err != nil {
		return fmt.Errorf("kvstoremesh: the cluster's etcd client certificate: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: c.cfg.Endpoints, TLS: tlsCfg, Context: ctx, Logger: zap.NewNop(),
		DialTimeout: 5 * time.Second, DialKeepAliveTime: 5 * time.Second, DialKeepAliveTimeout: 5 * time.Second,
		MaxCallSendMsgSize: c.cfg.TxnBytes + 256<<10, MaxCallRecvMsgSize: 64 << 20,
	})
	if err != nil {
		return fmt.Errorf("kvstoremesh: connecting to the cluster's etcd: %w", err)
	}
	defer cli.Close()
	configured, err := configuredRemotes(c.cfg.Sync.ConfigDir)
	if err != nil {
		return fmt.Errorf("kvstoremesh: %w", err)
	}
	opening := time.Now()
	lease, prev, err := c.open(ctx, cli, configured)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	c.w.start(cli, lease, prev, configured)
	c.log.Info("cache starting", "remotes", len(configured), "previousEntries", prev.count(), "previousLeases", len(prev.leases),
		"previousReadIn", time.Since(opening).Round(time.Millisecond))

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for _, id := range prev.leases {
		if id != lease {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.w.keepPrevious(ctx, id)
			}()
		}
	}
	run := func(f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- f(ctx)
		}()
	}
	run(func(ctx context.Context) error { return keepAlive(ctx, cli, lease, true) })
	run(c.w.run)
	run(c.reader.Run)
	run(c.exportStatus)
	err = <-errc
	cancel()
	wg.Wait()
	if ctx.Err() != nil && !errors.Is(err, ErrLeaseLost) {
		return nil
	}
	return err
}

// openAttemptTimeout bounds one attempt to grant the lease and read what a
// previous run left (its entries' values: 3.6 s read one page after another
// at 237,000 entries).
const openAttemptTimeout = time.Minute

// open reads what a previous run left and takes the cache's lease,
// retrying with backoff while the cluster's apiserver is not up (the cache
// may start before it) until ctx is done.
func (c *Cache) open(ctx context.Context, cli *clientv3.Client, configured map[string]bool) (clientv3.LeaseID, previous, error) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 200*time.Millisecond, 10*time.Second, 0
	bo.Reset()
	for {
		actx, cancel := context.WithTimeout(ctx, openAttemptTimeout)
		prev, err := loadPrevious(actx, cli, configured)
		var lease clientv3.LeaseID
		if err == nil {
			lease, err = c.lease(actx, cli, prev)
		} else {
			err = fmt.Errorf("reading what a previous run cached: %w", err)
		}
		cancel()
		if err == nil {
			return lease, prev, nil
		}
		wait := bo.NextBackOff()
		c.log.Warn("the cluster's apiserver is not answering: retrying", "endpoints", c.cfg.Endpoints, "in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, previous{}, fmt.Errorf("kvstoremesh: %w", err)
		case <-t.C:
		}
	}
}

// lease adopts the lease most of a previous run's entries are on while it
// is alive (a restarted cache then rewrites only what changed: 237,000
// unchanged entries rewritten were a resync of 24 s at 100 remotes, every
// agent receiving each again), or grants a new one.
func (c *Cache) lease(ctx context.Context, cli *clientv3.Client, prev previous) (clientv3.LeaseID, error) {
	if prev.most != 0 {
		_, err := cli.KeepAliveOnce(ctx, prev.most)
		if err == nil {
			c.log.Info("adopted the previous run's lease: its unchanged entries are not rewritten", "lease", fmt.Sprintf("%x", prev.most))
			return prev.most, nil
		}
		if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return 0, fmt.Errorf("keeping the previous run's lease %x alive: %w", prev.most, err)
		}
	}
	g, err := cli.Grant(ctx, int64(c.cfg.LeaseTTL.Seconds()))
	if err != nil {
		return 0, fmt.Errorf("granting the cache's lease: %w", err)
	}
	return g.ID, nil
}

// keepAlive keeps lease id alive until ctx is done; with own, its loss is
// ErrLeaseLost.
func keepAlive(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID, own bool) error {
	ch, err := cli.KeepAlive(ctx, id)
	if err != nil {
		return fmt.Errorf("kvstoremesh: keeping lease %x alive: %w", id, err)
	}
	for range ch {
	}
	if ctx.Err() != nil || !own {
		return nil
	}
	return fmt.Errorf("kvstoremesh: %w (%x): restart the cache to write everything again", ErrLeaseLost, id)
}

// configuredRemotes names the remotes of the config directory (as
// agentsync reads it: regular files, hidden ones skipped).
func configuredRemotes(dir string) (map[string]bool, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading the remotes' config directory: %w", err)
	}
	out := map[string]bool{}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") && e.Type().IsRegular() {
			out[e.Name()] = true
		}
	}
	return out, nil
}

// Status is the cache's state: its reading side's remotes, and its writes.
type Status struct {
	Cluster string                   `json:"cluster"`
	Remotes []agentsync.RemoteStatus `json:"remotes"`
	Writes  WriteStats               `json:"writes"`
}

// Status returns the cache's status.
func (c *Cache) Status() Status {
	st := c.reader.Status()
	return Status{Cluster: c.cfg.Sync.ClusterName, Remotes: st.Remotes, Writes: c.w.stats()}
}
