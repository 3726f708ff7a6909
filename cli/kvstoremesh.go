package cli

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/metricsserver"
	"github.com/clustermesh/clustermesh/kvstoremesh"
	"github.com/clustermesh/clustermesh/wire"
)

const kvstoremeshLong = `Run the remote-state cache of one cluster (Cilium's KVStoreMesh): it reads
every remote cluster whose etcd client config is in --config-dir (one file per
cluster, named after it, as the agent's), with the agent's own sessions,
validation, per-remote limits and mark-and-sweep, and writes what it accepts
into this cluster's own mesh apiserver (--etcd-endpoints, as admin-<cluster>
from --cert-dir), in Cilium's cache layout: cilium/cache/<kind>/v1/<remote>/,
the remote's cluster config with "cached": true, and a synced canary per
remote and kind once that kind is fully written.

The cluster's agents then read every remote from their own apiserver: in
their --config-dir, each remote's file points at this cluster's apiserver
(with the agents' remote-<cluster> certificate); the cached cluster config
tells them to read the cache. Their status says, per remote, what the cache
says of its session with it (connected, ready, heartbeat), and whether the
cache itself is down.

Restarting the cache removes nothing the agents hold: what it wrote stays
until each remote is listed again, and only then is what a remote no longer
has deleted. See docs/kvstoremesh.md.`

func newKVStoreMeshCmd() *cobra.Command {
	var (
		cfg                  kvstoremesh.Config
		certDir, metricsAddr string
	)
	s := &cfg.Sync
	cmd := &cobra.Command{
		Use:   "kvstoremesh --cluster-name NAME --cluster-id ID --config-dir DIR --cert-dir DIR",
		Short: "Run a cluster's remote-state cache: every remote cached in the cluster's own apiserver",
		Long:  kvstoremeshLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b := ca.Bundle{Dir: certDir, Cluster: s.ClusterName}
			cfg.CertFile, cfg.KeyFile, cfg.CAFile = b.AdminCert(), b.AdminKey(), b.CAFile()
			cfg.Logger = slog.Default()
			return runKVStoreMesh(cmd.Context(), cfg, metricsAddr)
		},
	}
	f := cmd.Flags()
	f.StringVar(&s.ClusterName, "cluster-name", "", "name of this cluster")
	f.Uint32Var(&s.ClusterID, "cluster-id", 0, "id of this cluster")
	f.Uint32Var(&s.MaxConnectedClusters, "max-connected-clusters", wire.DefaultMaxConnectedClusters, "mesh size: 255 or 511 (the same on every cluster)")
	f.StringVar(&s.ConfigDir, "config-dir", "", "directory with one etcd client config per remote cluster (each remote's own mesh apiserver)")
	f.StringVar(&certDir, "cert-dir", "", "this cluster's bundle ('clustermesh ca issue'): ca.crt and admin-<cluster>.crt/key reach its own apiserver")
	f.StringSliceVar(&cfg.Endpoints, "etcd-endpoints", []string{"https://127.0.0.1:2379"}, "this cluster's mesh apiserver, where the cache writes")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", kvstoremesh.DefaultLeaseTTL, "TTL of the lease every cached entry is attached to (kept alive; a cache down for longer loses what it wrote)")
	f.DurationVar(&s.ProbeInterval, "probe-interval", agentsync.DefaultProbeInterval, "how often each remote's heartbeat is read")
	f.DurationVar(&s.ProbeTimeout, "probe-timeout", agentsync.DefaultProbeTimeout, "a remote that does not answer within this is disconnected (what is cached of it stays)")
	f.DurationVar(&s.BackoffMax, "backoff-max", agentsync.DefaultBackoffMax, "longest wait between reconnect attempts")
	f.IntVar(&s.RemoteLimits.Nodes, "max-remote-nodes", 0, "most nodes cached from one remote cluster (0: the agent's default)")
	f.IntVar(&s.RemoteLimits.Identities, "max-remote-identities", 0, "most identities cached from one remote cluster (0: the agent's default)")
	f.IntVar(&s.RemoteLimits.IPCache, "max-remote-ipcache-entries", 0, "most ipcache entries cached from one remote cluster (0: the agent's default)")
	f.IntVar(&s.RemoteLimits.Services, "max-remote-services", 0, "most global services cached from one remote cluster (0: the agent's default)")
	f.Int64Var(&s.RemoteLimits.Bytes, "max-remote-bytes", 0, "most bytes of node, identity and service values cached from one remote cluster (0: the agent's default)")
	f.Int64Var(&s.ListPageBytes, "list-page-bytes", 0, "largest list page read from a remote, in bytes (0: the agent's default)")
	f.StringVar(&metricsAddr, "metrics-addr", "127.0.0.1:9964", "host:port to serve Prometheus /metrics on, without authentication (\"\" disables)")
	for _, r := range []string{"cluster-name", "cluster-id", "config-dir", "cert-dir"} {
		cmd.MarkFlagRequired(r)
	}
	return cmd
}

func runKVStoreMesh(ctx context.Context, cfg kvstoremesh.Config, metricsAddr string) error {
	c, err := kvstoremesh.New(cfg)
	if err != nil {
		return fmt.Errorf("kvstoremesh: %w", err)
	}
	metrics := func(ctx context.Context) error {
		return metricsserver.Serve(ctx, slog.Default(), metricsAddr, kvstoremesh.NewCollector(c))
	}
	return runAll(ctx, c.Run, metrics)
}
