package localmesh

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/kvstoremesh"
)

// With Options.Cache every cluster runs a kvstoremesh cache beside its
// apiserver: the cache reads every peer (its configs in CacheConfigDir, as
// remote-<cluster>) and writes them into the cluster's own etcd (as
// admin-<cluster>); the agents' config for each peer points at their own
// cluster's apiserver, where they find the peer cached.

// cacheRestartDelay is how long the supervisor waits before running a
// cache again after it stopped on an error (a lost lease: its apiserver's
// store restarted).
const cacheRestartDelay = 100 * time.Millisecond

// StartCache starts (or restarts) the cluster's cache; it runs until
// StopCache or Close, run again after an error as a supervisor would.
func (c *Cluster) StartCache(ctx context.Context) error {
	c.mu.Lock()
	running := c.stopCache != nil
	c.mu.Unlock()
	if running {
		return fmt.Errorf("localmesh: the cache of %s is already running", c.Name)
	}
	cache, err := c.newCache()
	if err != nil {
		return err
	}
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	c.mu.Lock()
	c.cache, c.stopCache, c.cacheDone = cache, cancel, done
	c.mu.Unlock()
	go func() {
		defer close(done)
		for {
			err := cache.Run(cctx)
			if cctx.Err() != nil {
				return
			}
			c.mesh.opts.Logger.Warn("cache stopped, running it again", "cluster", c.Name, "err", err)
			select {
			case <-cctx.Done():
				return
			case <-time.After(cacheRestartDelay):
			}
			next, err := c.newCache()
			if err != nil {
				c.mesh.opts.Logger.Error("cache not restartable", "cluster", c.Name, "err", err)
				return
			}
			c.mu.Lock()
			c.cache, cache = next, next
			c.mu.Unlock()
		}
	}()
	return nil
}

func (c *Cluster) newCache() (*kvstoremesh.Cache, error) {
	o := c.mesh.opts
	cfg := kvstoremesh.Config{
		Sync: agentsync.Config{
			ClusterName: c.Name, ClusterID: c.ID, ConfigDir: c.CacheConfigDir,
			ConfigPollInterval: 50 * time.Millisecond, ProbeInterval: o.ProbeInterval, ProbeTimeout: time.Second,
			BackoffInitial: 50 * time.Millisecond, BackoffMax: time.Second,
			Logger: o.Logger.With("cache", c.Name),
		},
		Endpoints: []string{"https://" + c.Address()},
		CertFile:  c.Bundle.AdminCert(), KeyFile: c.Bundle.AdminKey(), CAFile: c.Bundle.CAFile(),
		Logger: o.Logger,
	}
	if o.Agent != nil {
		o.Agent(&cfg.Sync) // the same timeouts and limits as the agents
	}
	if o.CacheConfig != nil {
		o.CacheConfig(&cfg)
	}
	return kvstoremesh.New(cfg)
}

// StopCache stops the cluster's cache; what it wrote stays (on its lease).
func (c *Cluster) StopCache() {
	c.mu.Lock()
	stop, done := c.stopCache, c.cacheDone
	c.stopCache, c.cacheDone = nil, nil
	c.mu.Unlock()
	if stop == nil {
		return
	}
	stop()
	<-done
}

// Cache returns the cluster's cache (the last one run), or nil.
func (c *Cluster) Cache() *kvstoremesh.Cache {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cache
}

// writeRemoteConfig writes the config of remote name into dir: its etcd at
// addr, read with this cluster's remote certificate.
func (c *Cluster) writeRemoteConfig(dir, name, addr string) error {
	cfg := fmt.Sprintf("endpoints:\n- https://%s\ntrusted-ca-file: %s\ncert-file: %s\nkey-file: %s\n",
		addr, c.Bundle.CAFile(), c.Bundle.RemoteCert(), c.Bundle.RemoteKey())
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path+".tmp", []byte(cfg), 0o600); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}
