package ciliumagent

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/hive/hivetest"
	"github.com/cilium/statedb"

	"github.com/cilium/cilium/pkg/clustermesh"
	"github.com/cilium/cilium/pkg/clustermesh/common"
	cmtypes "github.com/cilium/cilium/pkg/clustermesh/types"
	"github.com/cilium/cilium/pkg/clustermesh/wait"
	"github.com/cilium/cilium/pkg/identity/cache"
	"github.com/cilium/cilium/pkg/kvstore"
	"github.com/cilium/cilium/pkg/kvstore/store"
	"github.com/cilium/cilium/pkg/metrics"
	"github.com/cilium/cilium/pkg/option"
)

// ciliumAgent is the clustermesh part of a Cilium agent of cluster west:
// Cilium's ClusterMesh reading every remote whose etcd config is in dir,
// handing what it reads to the view.
type ciliumAgent struct {
	cm      *clustermesh.ClusterMesh
	v       *view
	dir     string // the clustermesh config directory
	staging string // where a config is written before it is renamed into dir
}

// startCiliumAgent builds the ClusterMesh as the agent's clustermesh.Cell
// does, with the agent's own parts where they are the observers (Cilium's
// identity allocator with a remote cache per cluster, Cilium's watch store
// factory) and the view where they are the agent's datapath (node manager,
// ipcache, service merger). The local identity allocator runs on Cilium's
// in-memory kvstore: the local cluster's own store plays no part here.
func startCiliumAgent(t *testing.T, maxConnectedClusters uint32) *ciliumAgent {
	t.Helper()
	return startCiliumAgentWith(t, maxConnectedClusters, common.DefaultRemoteClientFactory(kvstore.Config{}))
}

// startCiliumAgentWith is startCiliumAgent with the agent's etcd clients
// made by factory.
func startCiliumAgentWith(t *testing.T, maxConnectedClusters uint32, factory common.RemoteClientFactoryFn) *ciliumAgent {
	t.Helper()
	a := &ciliumAgent{v: newView(), dir: t.TempDir(), staging: t.TempDir()}
	logger := slog.New(&logHandler{v: a.v})
	local := cmtypes.ClusterInfo{ID: localID, Name: localName, MaxConnectedClusters: maxConnectedClusters}
	if err := local.InitClusterIDMax(); err != nil {
		t.Fatal(err)
	}
	if err := local.Validate(); err != nil {
		t.Fatal(err)
	}
	option.Config.ClusterID = local.ID
	option.Config.ClusterName = local.Name
	option.Config.MaxConnectedClusters = maxConnectedClusters
	option.Config.IdentityAllocationMode = option.IdentityAllocationModeKVstore

	ids := cache.NewCachingIdentityAllocator(logger, a.v, cache.NewTestAllocatorConfig())
	<-ids.InitIdentityAllocator(nil, kvstore.NewInMemoryClient(statedb.New(), local.Name))
	t.Cleanup(ids.Close)

	a.cm = clustermesh.NewClusterMesh(hivetest.Lifecycle(t), clustermesh.Configuration{
		Config:                common.Config{ClusterMeshConfig: a.dir},
		ServiceModeV2Config:   cmtypes.DefaultServiceModeV2Config,
		TimeoutConfig:         wait.TimeoutConfigDefault,
		ClusterInfo:           local,
		RemoteClientFactory:   factory,
		ServiceMerger:         a.v,
		NodeObserver:          a.v,
		RemoteIdentityWatcher: ids,
		IPCache:               a.v,
		ClusterIDsManager:     clustermesh.NewClusterMeshUsedIDs(local.ID),
		Metrics:               clustermesh.NewMetrics(),
		CommonMetrics:         common.MetricsProvider(metrics.SubsystemClusterMesh)(),
		StoreFactory:          store.NewFactory(logger, store.MetricsProvider()),
		FeatureMetrics:        a.v,
		Logger:                logger,
	})
	if a.cm == nil {
		t.Fatal("NewClusterMesh returned nil")
	}
	return a
}

// configure writes the etcd config of remote cluster name, as the
// clustermesh secret of a Cilium agent holds it: endpoint, CA, certificate.
func (a *ciliumAgent) configure(t *testing.T, name, url, caFile, cert, key string) {
	t.Helper()
	writeEtcdConfig(t, a.dir, a.staging, name, url, caFile, cert, key)
}

// writeEtcdConfig writes an etcd config named name into dir, through
// staging so that a watcher of dir sees only the whole file.
func writeEtcdConfig(t *testing.T, dir, staging, name, url, caFile, cert, key string) {
	t.Helper()
	staged := filepath.Join(staging, name)
	writeFile(t, staged,
		fmt.Sprintf("endpoints:\n- %s\ntrusted-ca-file: %s\ncert-file: %s\nkey-file: %s\n", url, caFile, cert, key))
	if err := os.Rename(staged, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// ready is Cilium's verdict on remote name: connected, its config valid,
// every kind synced, with the counts it reports.
func (a *ciliumAgent) ready(name string, nodes, endpoints, identities, services int64) error {
	for _, c := range a.cm.Status().Clusters {
		if c.Name != name {
			continue
		}
		switch {
		case !c.Connected:
			return fmt.Errorf("cluster %s not connected: %s", name, c.Status)
		case !c.Ready:
			return fmt.Errorf("cluster %s not ready: %s, synced %+v", name, c.Status, c.Synced)
		case c.NumNodes != nodes || c.NumEndpoints != endpoints || c.NumIdentities != identities || c.NumSharedServices != services:
			return fmt.Errorf("cluster %s: %d nodes, %d endpoints, %d identities, %d services; want %d, %d, %d, %d",
				name, c.NumNodes, c.NumEndpoints, c.NumIdentities, c.NumSharedServices, nodes, endpoints, identities, services)
		}
		return nil
	}
	return fmt.Errorf("cluster %s unknown to Cilium", name)
}

// meshCerts are the certificates of the test, made with our CLI.
type meshCerts struct {
	caFile, bundle string
	shared         [2]string // the shared user remote's certificate and key
	perPeer        [2]string // remote-west's
}

func issueCerts(t *testing.T, dir string) meshCerts {
	t.Helper()
	run(t, "ca", "create", "--out", filepath.Join(dir, "ca"))
	ca := filepath.Join(dir, "ca")
	run(t, "ca", "issue", "--ca", ca, "--out", filepath.Join(dir, clusterName), "--cluster", clusterName)
	run(t, "ca", "issue", "--ca", ca, "--out", filepath.Join(dir, "cilium"), "--client", "remote")
	run(t, "ca", "issue", "--ca", ca, "--out", filepath.Join(dir, "cilium"), "--client", "remote-"+localName)
	c := filepath.Join(dir, "cilium")
	return meshCerts{
		caFile: filepath.Join(ca, "ca.crt"), bundle: filepath.Join(dir, clusterName),
		shared:  [2]string{filepath.Join(c, "remote.crt"), filepath.Join(c, "remote.key")},
		perPeer: [2]string{filepath.Join(c, "remote-"+localName+".crt"), filepath.Join(c, "remote-"+localName+".key")},
	}
}

// apiserverArgs are the flags of east's apiserver: west may read it, and
// Cilium agents log in as the shared user remote.
func apiserverArgs(certs meshCerts, addr, stateFile, stateDir string, maxClusters uint32) []string {
	return []string{
		"--cluster-name", clusterName, "--cluster-id", fmt.Sprint(clusterID), "--cert-dir", certs.bundle,
		"--state-file", stateFile, "--state-dir", stateDir, "--listen", addr, "--metrics-addr", "",
		"--peer", localName, "--cilium-remote-user", "--max-connected-clusters", fmt.Sprint(maxClusters),
		"--heartbeat-interval", "2s",
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// counts of the states: nodes, ipcache entries, identities, services.
func counts(w wantState) (int64, int64, int64, int64) {
	ids := map[string]bool{}
	for _, e := range w.endpoints {
		ids[e.namespace+"/"+e.serviceAccount+"/"+fmt.Sprint(e.labels)] = true
	}
	var services int64
	if w.backends != nil {
		services = 1
	}
	nodes := int64(len(wantNodes))
	if len(w.endpoints) == 0 {
		nodes = 0
	}
	return nodes, int64(len(w.endpoints)), int64(len(ids)), services
}

// waitState waits until Cilium reports east ready with want's counts and
// the view holds exactly want.
func (a *ciliumAgent) waitState(t *testing.T, what string, want wantState) {
	t.Helper()
	n, e, i, s := counts(want)
	a.v.waitFor(t, what, func(v *view) error {
		if err := a.ready(clusterName, n, e, i, s); err != nil {
			return err
		}
		return v.check(want)
	})
}

// TestCiliumAgentReadsOurApiserver runs Cilium's ClusterMesh against our
// apiserver (a process, certificates from our CLI) with the shared remote
// user's certificate, as a Cilium agent of cluster west configured with a
// clustermesh secret for east: it must connect, become ready and hold
// exactly what the state file says; follow an added pod, a removed one and
// one turned unready; keep reading with the per-peer user remote-west
// instead; resync after the apiserver restarts (a new etcd behind the same
// address) with what changed while it was down, stale entries removed; and
// drain everything when the config is removed.
func TestCiliumAgentReadsOurApiserver(t *testing.T) {
	dir := t.TempDir()
	certs := issueCerts(t, dir)
	statePath, stateDir, addr := filepath.Join(dir, "east.yaml"), filepath.Join(dir, "identities"), freeAddr(t)
	writeFile(t, statePath, stateBefore)
	srv := startAPIServer(t, apiserverArgs(certs, addr, statePath, stateDir, 255)...)
	url := srv.url

	a := startCiliumAgent(t, 255)
	a.configure(t, clusterName, url, certs.caFile, certs.shared[0], certs.shared[1])
	a.waitState(t, "the first state", wantBefore)

	writeFile(t, statePath, stateAfter)
	a.waitState(t, "the changed state", wantAfter)

	// The recommended per-peer user: Cilium reconnects on the changed
	// config and reads the same.
	connected := a.connections()
	a.configure(t, clusterName, url, certs.caFile, certs.perPeer[0], certs.perPeer[1])
	a.waitConnections(t, connected+1)
	writeFile(t, statePath, stateBefore)
	a.waitState(t, "the first state again, read as remote-west", wantBefore)

	// A restart: a new etcd (another etcd cluster id) at the same address,
	// publishing what changed while it was down.
	if err := srv.stop(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, statePath, stateWhileDown)
	connected = a.connections()
	startAPIServer(t, apiserverArgs(certs, addr, statePath, stateDir, 255)...)
	a.waitConnections(t, connected+1)
	a.waitState(t, "the state written while the apiserver was down", wantWhileDown)

	// The config removed: Cilium drains the cluster.
	if err := os.Remove(filepath.Join(a.dir, clusterName)); err != nil {
		t.Fatal(err)
	}
	a.v.waitFor(t, "east drained", func(v *view) error {
		if n := a.cm.NumReadyClusters(); n != 0 {
			return fmt.Errorf("%d clusters ready", n)
		}
		return v.check(wantNothing)
	})
	if w := a.v.unexpectedWarnings(); w != "" {
		t.Errorf("Cilium warned:\n%s", w)
	}
}

// connections is how many times Cilium connected to a remote cluster.
func (a *ciliumAgent) connections() int {
	return a.v.count("Connection to remote cluster established")
}

func (a *ciliumAgent) waitConnections(t *testing.T, n int) {
	t.Helper()
	a.v.waitFor(t, fmt.Sprintf("connection %d", n), func(v *view) error {
		if got := v.count("Connection to remote cluster established"); got < n {
			return fmt.Errorf("%d connections", got)
		}
		return nil
	})
}
