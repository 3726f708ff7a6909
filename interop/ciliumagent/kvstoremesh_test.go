package ciliumagent

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/hive/cell"
	"github.com/cilium/statedb"
	"github.com/spf13/pflag"

	"github.com/cilium/cilium/pkg/clustermesh/kvstoremesh"
	cmtypes "github.com/cilium/cilium/pkg/clustermesh/types"
	"github.com/cilium/cilium/pkg/hive"
	"github.com/cilium/cilium/pkg/kvstore"
	"github.com/cilium/cilium/pkg/kvstore/store"
)

// startKVStoreMesh runs Cilium's KVStoreMesh (the clustermesh-apiserver's
// kvstoremesh container, Helm's default) of cluster west, reading every
// remote whose etcd config is in dir and caching it under cilium/cache/ in
// west's own kvstore, here Cilium's in-memory one, which it returns. It is
// stopped when t ends.
func startKVStoreMesh(t *testing.T, dir string, logger *slog.Logger) kvstore.Client {
	t.Helper()
	var local kvstore.Client
	h := hive.New(
		kvstoremesh.Cell,
		store.Cell,
		cell.Config(cmtypes.DefaultServiceModeV2Config),
		cell.Provide(
			func() cmtypes.ClusterInfo {
				return cmtypes.ClusterInfo{ID: localID, Name: localName, MaxConnectedClusters: 255}
			},
			func() kvstoremesh.Config { return kvstoremesh.DefaultConfig },
			func() kvstore.Config { return kvstore.Config{} },
			func(db *statedb.DB) kvstore.Client { return kvstore.NewInMemoryClient(db, localName) },
		),
		// Providers run only when invoked: ask for KVStoreMesh itself.
		cell.Invoke(func(c kvstore.Client, _ *kvstoremesh.KVStoreMesh) { local = c }),
	)
	flags := pflag.NewFlagSet("kvstoremesh", pflag.ContinueOnError)
	h.RegisterFlags(flags)
	if err := flags.Set("clustermesh-config", dir); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := h.Start(logger, ctx); err != nil {
		t.Fatalf("starting KVStoreMesh: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := h.Stop(logger, ctx); err != nil {
			t.Errorf("stopping KVStoreMesh: %v", err)
		}
	})
	return local
}

// TestCiliumKVStoreMeshReadsOurApiserver: the path a Cilium v1.20 cluster
// installed by Helm takes by default. Its KVStoreMesh reads our apiserver
// with the shared remote certificate and caches it in the cluster's own
// kvstore; the agents' ClusterMesh reads the cache (a cluster config with
// cached, the cilium/cache/ prefixes). What the agent holds is exactly what
// our state file says, before and after a change, and after our apiserver
// restarted with what changed while it was down. (A removed config is not
// tried here: KVStoreMesh drains its cache 3 minutes after, its own grace
// period for the agents, pkg/clustermesh/kvstoremesh/remote_cluster.go.)
func TestCiliumKVStoreMeshReadsOurApiserver(t *testing.T) {
	dir := t.TempDir()
	certs := issueCerts(t, dir)
	statePath, stateDir, addr := filepath.Join(dir, "east.yaml"), filepath.Join(dir, "ids"), freeAddr(t)
	writeFile(t, statePath, stateBefore)
	srv := startAPIServer(t, apiserverArgs(certs, addr, statePath, stateDir, 255)...)

	// The agents' etcd client is the cluster's own kvstore, where
	// KVStoreMesh writes: as in Cilium's own tests, every remote config
	// of the agent dials it.
	var (
		local      kvstore.Client
		localReady = make(chan struct{}) // closed once local is set
	)
	a := startCiliumAgentWith(t, 255, func(context.Context, *slog.Logger, string, kvstore.ExtraOptions) (kvstore.BackendOperations, chan error) {
		<-localReady
		connected := make(chan error)
		close(connected)
		return local, connected
	})
	meshDir := t.TempDir()
	local = startKVStoreMesh(t, meshDir, slog.New(&logHandler{v: a.v}))
	close(localReady)
	writeEtcdConfig(t, meshDir, t.TempDir(), clusterName, srv.url, certs.caFile, certs.shared[0], certs.shared[1])
	writeEtcdConfig(t, a.dir, t.TempDir(), clusterName, "the cluster's own kvstore", certs.caFile, certs.shared[0], certs.shared[1])

	a.waitState(t, "the first state, through KVStoreMesh", wantBefore)
	writeFile(t, statePath, stateAfter)
	a.waitState(t, "the changed state, through KVStoreMesh", wantAfter)

	if err := srv.stop(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, statePath, stateWhileDown)
	startAPIServer(t, apiserverArgs(certs, addr, statePath, stateDir, 255)...)
	a.waitState(t, "the state written while the apiserver was down, through KVStoreMesh", wantWhileDown)
	if w := a.v.unexpectedWarnings(); w != "" {
		t.Errorf("Cilium warned:\n%s", w)
	}
}
