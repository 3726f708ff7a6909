package interop

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/cilium/cilium/pkg/clustermesh/clustercfg"
	serviceStore "github.com/cilium/cilium/pkg/clustermesh/store"
	cmtypes "github.com/cilium/cilium/pkg/clustermesh/types"
	"github.com/cilium/cilium/pkg/identity"
	"github.com/cilium/cilium/pkg/kvstore"
	etcdinit "github.com/cilium/cilium/pkg/kvstore/etcdinit"
	"github.com/cilium/cilium/pkg/kvstore/store"
	nodeStore "github.com/cilium/cilium/pkg/node/store"
	nodeTypes "github.com/cilium/cilium/pkg/node/types"

	"github.com/clustermesh/clustermesh/ca"
)

// ciliumPKI is what a Cilium cluster's clustermesh-apiserver and its
// readers are given, issued from our mesh CA: the etcd server certificate,
// root (the init), admin-<cluster> (the apiserver's writers), remote (a
// peer's agents in Cilium's authMode legacy and migration) and
// remote-<our cluster> (in authMode cluster, and our agents).
type ciliumPKI struct {
	bundle ca.Bundle
	dir    string
}

func newCiliumPKI(t *testing.T, mesh *ca.CA, dir, cluster string) ciliumPKI {
	t.Helper()
	bundle, err := mesh.IssueBundle(dir, cluster, []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	for _, user := range []string{"root", "remote", "remote-" + ourName} {
		c, err := mesh.IssueClient(user)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Save(dir, user); err != nil {
			t.Fatal(err)
		}
	}
	return ciliumPKI{bundle: bundle, dir: dir}
}

func (p ciliumPKI) cert(user string) string { return filepath.Join(p.dir, user+".crt") }
func (p ciliumPKI) key(user string) string  { return filepath.Join(p.dir, user+".key") }

// etcdConfig writes an etcd client config (Cilium's format, which our agent
// reads too) for user and returns its path.
func (p ciliumPKI) etcdConfig(t *testing.T, path, endpoint, user string) string {
	t.Helper()
	cert, key := p.cert(user), p.key(user)
	if user == "admin" {
		cert, key = p.bundle.AdminCert(), p.bundle.AdminKey()
	}
	writeFile(t, path, fmt.Sprintf("endpoints:\n- https://%s\ntrusted-ca-file: %s\ncert-file: %s\nkey-file: %s\n",
		endpoint, p.bundle.CAFile(), cert, key))
	return path
}

// startCiliumEtcd starts the etcd of a Cilium clustermesh-apiserver on addr
// with its data in dataDir, behind mTLS with the client certificate's
// common name as the etcd user (--client-cert-auth, as Cilium's
// etcd-config.yaml). A data dir used before keeps its etcd cluster id and
// content; etcdinit runs only on a fresh one. The function returned
// closes it (again when t ends: closing twice does nothing).
func startCiliumEtcd(t *testing.T, p ciliumPKI, addr, dataDir, cluster string, fresh bool) (closeEtcd func()) {
	t.Helper()
	ec := embed.NewConfig()
	ec.Name, ec.Dir = cluster, dataDir
	ec.UnsafeNoFsync = true
	ec.TickMs, ec.ElectionMs = 10, 100
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ec.AuthToken = "simple"
	client := url.URL{Scheme: "https", Host: addr}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	ec.ListenClientHttpUrls = []url.URL{{Scheme: "unix", Host: filepath.Join(dataDir + ".http")}}
	ec.ListenPeerUrls = []url.URL{{Scheme: "unix", Host: filepath.Join(dataDir + ".peer")}}
	ec.AdvertisePeerUrls = []url.URL{{Scheme: "unix", Host: cluster + "-peer"}}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.InitialClusterToken = "cilium-" + filepath.Base(dataDir)
	ec.ClientTLSInfo.CertFile, ec.ClientTLSInfo.KeyFile = p.bundle.ServerCert(), p.bundle.ServerKey()
	ec.ClientTLSInfo.TrustedCAFile, ec.ClientTLSInfo.ClientCertAuth = p.bundle.CAFile(), true
	e, err := embed.StartEtcd(ec)
	if err != nil {
		t.Fatalf("starting Cilium's etcd: %v", err)
	}
	closeEtcd = sync.OnceFunc(e.Close)
	t.Cleanup(closeEtcd)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatalf("Cilium's etcd: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Cilium's etcd not ready after 30s")
	}
	if fresh {
		initCiliumEtcd(t, p, addr, cluster)
	}
	return closeEtcd
}

// initCiliumEtcd runs Cilium's own etcd init (the clustermesh-apiserver's
// etcdinit command) as root: users root, admin-<cluster>, local-<cluster>
// and remote, their roles, then authentication on.
func initCiliumEtcd(t *testing.T, p ciliumPKI, addr, cluster string) {
	t.Helper()
	c := p.client(t, addr, p.cert("root"), p.key("root"))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := etcdinit.ClusterMeshEtcdInit(ctx, slog.New(slog.DiscardHandler), c, cluster); err != nil {
		t.Fatalf("Cilium's etcdinit: %v", err)
	}
}

// client is a plain etcd client with a certificate of the mesh CA.
func (p ciliumPKI) client(t *testing.T, addr, cert, key string) *clientv3.Client {
	t.Helper()
	tlsCfg, err := ca.ClientTLSConfig(cert, key, p.bundle.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + addr}, TLS: tlsCfg, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// etcdClusterID is the etcd cluster id a client sees at addr.
func etcdClusterID(t *testing.T, p ciliumPKI, addr string) uint64 {
	t.Helper()
	c := p.client(t, addr, p.cert("remote"), p.key("remote"))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, kvstore.HeartbeatPath)
	if err != nil {
		t.Fatalf("reading the heartbeat as remote: %v", err)
	}
	return resp.Header.ClusterId
}

// ciliumState is what a Cilium cluster's clustermesh-apiserver publishes,
// in Cilium's own types: CiliumNodes as nodes, CiliumIdentities as
// identities (labels as SortedList), CiliumEndpoints as ipcache entries,
// global services with their ready backends.
type ciliumState struct {
	nodes      []nodeTypes.Node
	identities map[identity.NumericIdentity]string
	ips        []identity.IPIdentityPair
	services   []serviceStore.ClusterService
	// slicesOnly: the cluster config says endpointslices-only, so a
	// reader finds no services to read (those in the store are not read).
	slicesOnly bool
}

// ciliumWriter is the writing half of a Cilium clustermesh-apiserver,
// made of Cilium's own code: its kvstore client as admin-<cluster>, the
// cluster config written by clustercfg with synced canaries and the
// endpoint slice export mode of v1.20's default service mode, the
// heartbeat, and one SyncStore per kind with the prefixes and synced-key
// overrides of clustermesh-apiserver/clustermesh and operator/watchers.
type ciliumWriter struct {
	cluster string
	client  kvstore.BackendOperations
	cancel  context.CancelFunc
	once    sync.Once
	wg      sync.WaitGroup
	stores  [4]store.SyncStore // nodes, identities, ipcache, services
	written [4]map[string]bool // key names written per store
	synced  bool
}

func startCiliumWriter(t *testing.T, cfgPath string, cluster string, cfg cmtypes.CiliumClusterConfig) *ciliumWriter {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &ciliumWriter{cluster: cluster, cancel: cancel}
	quiet := slog.New(slog.DiscardHandler)
	var errCh chan error
	w.client, errCh = kvstore.NewClient(ctx, quiet, kvstore.EtcdBackendName,
		map[string]string{kvstore.EtcdOptionConfig: cfgPath}, kvstore.ExtraOptions{})
	t.Cleanup(w.close)
	select {
	case err := <-errCh:
		if err != nil {
			t.Fatalf("Cilium's kvstore client as admin: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Cilium's kvstore client not connected after 30s")
	}
	if err := clustercfg.Set(ctx, cluster, cfg, w.client); err != nil {
		t.Fatalf("clustercfg.Set: %v", err)
	}
	w.heartbeat(ctx, t)
	w.wg.Go(func() {
		tick := time.NewTicker(kvstore.HeartbeatWriteInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				w.heartbeat(ctx, nil)
			}
		}
	})
	factory := store.NewFactory(quiet, store.MetricsProvider())
	w.stores = [4]store.SyncStore{
		factory.NewSyncStore(cluster, w.client, nodeStore.NodeStorePrefix),
		factory.NewSyncStore(cluster, w.client, kvstore.JoinKey(identitiesPath, "id"), store.WSSWithSyncedKeyOverride(identitiesPath)),
		factory.NewSyncStore(cluster, w.client, kvstore.JoinKey(ipIdentitiesPath, "default"), store.WSSWithSyncedKeyOverride(ipIdentitiesPath)),
		factory.NewSyncStore(cluster, w.client, serviceStore.ServiceStorePrefix),
	}
	for i, s := range w.stores {
		w.written[i] = map[string]bool{}
		w.wg.Go(func() { s.Run(ctx) })
	}
	return w
}

// enforceUser does what the clustermesh-apiserver's users management
// (clustermesh-apiserver/clustermesh/users_mgmt.go) does for each entry of
// its users.yaml, which Cilium's Helm chart fills from
// clustermesh.config.clusters (the ConfigMap clustermesh-remote-users,
// "remote-<cluster>" with role "remote", unless authMode is legacy).
func (w *ciliumWriter) enforceUser(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	users, ok := w.client.(kvstore.BackendOperationsUserMgmt)
	if !ok {
		t.Fatalf("Cilium's kvstore client %T manages no users", w.client)
	}
	if err := users.UserEnforcePresence(ctx, name, []string{"remote"}); err != nil {
		t.Fatalf("UserEnforcePresence %s: %v", name, err)
	}
}

// heartbeat writes cilium/.heartbeat as kvstore/heartbeat's job does.
func (w *ciliumWriter) heartbeat(ctx context.Context, t *testing.T) {
	err := w.client.Update(ctx, kvstore.HeartbeatPath, []byte(time.Now().Format(time.RFC3339)), true)
	if err != nil && t != nil {
		t.Fatalf("heartbeat: %v", err)
	}
}

// write makes the stores hold exactly s (upserts, then deletes of what s
// no longer has), and writes the synced canaries after the first state.
func (w *ciliumWriter) write(t *testing.T, s ciliumState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var keys [4][]store.Key
	for i := range s.nodes {
		keys[0] = append(keys[0], &s.nodes[i])
	}
	for id, labels := range s.identities {
		keys[1] = append(keys[1], store.NewKVPair(id.StringID(), labels))
	}
	for i := range s.ips {
		keys[2] = append(keys[2], &s.ips[i])
	}
	for i := range s.services {
		keys[3] = append(keys[3], &s.services[i])
	}
	for i, st := range w.stores {
		want := map[string]bool{}
		for _, k := range keys[i] {
			want[k.GetKeyName()] = true
			if err := st.UpsertKey(ctx, k); err != nil {
				t.Fatalf("upserting %s: %v", k.GetKeyName(), err)
			}
		}
		for name := range w.written[i] {
			if !want[name] {
				if err := st.DeleteKey(ctx, store.NewKVPair(name, "")); err != nil {
					t.Fatalf("deleting %s: %v", name, err)
				}
			}
		}
		w.written[i] = want
		if !w.synced {
			if err := st.Synced(ctx); err != nil {
				t.Fatalf("synced canary: %v", err)
			}
		}
	}
	w.synced = true
}

// close stops the stores and the heartbeat, then closes the client; once.
func (w *ciliumWriter) close() {
	w.once.Do(func() {
		w.cancel()
		w.wg.Wait()
		if w.client != nil {
			w.client.Close()
		}
	})
}
