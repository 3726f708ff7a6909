package meshapiserver

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

const eastState = `
nodes:
- name: east-1
  ips: [192.168.1.1]
  podCIDRs: [10.1.1.0/24]
  annotations: {clustermesh.io/hubble-address: "192.168.1.1:4245"}
namespaces:
- {name: shop, labels: {team: payments}}
endpoints:
- {namespace: shop, pod: checkout-a, ip: 10.1.1.10, node: east-1, serviceAccount: checkout, labels: {app: checkout}}
- {namespace: shop, pod: checkout-b, ip: 10.1.1.11, node: east-1, serviceAccount: checkout, labels: {app: checkout}, ready: false}
- {namespace: shop, pod: cart-a, ip: 10.1.1.12, node: east-1, labels: {app: cart}}
services:
- namespace: shop
  name: checkout
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
  selector: {app: checkout}
  annotations: {service.cilium.io/global: "true", service.cilium.io/affinity: local}
- namespace: shop
  name: cart
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}]
  selector: {app: cart}
`

type fixture struct {
	dir     string
	mesh    *ca.CA
	east    ca.Bundle
	west    ca.Bundle
	state   string
	srv     *Server
	cancel  context.CancelFunc
	done    chan error
	idsFile string
	dataDir string
	// leaseTTL, when set, is the publishing lease's TTL (kept alive every
	// third of it).
	leaseTTL time.Duration
	// trustedCAs are further CAs whose client certificates are accepted.
	trustedCAs []string
	// runtimeDir, when set, is the parent of the apiserver's private
	// directory.
	runtimeDir string
	// historyRetention, when set, is how long etcd keeps old revisions.
	historyRetention time.Duration
	// ciliumRemote creates the shared user remote (Config.CiliumRemoteUser).
	ciliumRemote bool
	// exportMode is Config.ExportMode.
	exportMode ExportMode
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	dir := t.TempDir()
	mesh, err := ca.New("clustermesh test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{dir: dir, mesh: mesh, state: filepath.Join(dir, "east.yaml"), idsFile: filepath.Join(dir, "east-identities.json")}
	if f.east, err = mesh.IssueBundle(filepath.Join(dir, "east"), "east", []string{"localhost"}, ips("127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	if f.west, err = mesh.IssueBundle(filepath.Join(dir, "west"), "west", []string{"localhost"}, ips("127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, f.state, eastState)
	return f
}

// readyWithin bounds a fixture's first publish: 100,000 endpoints take a
// few seconds on an idle machine, many times that beside a cold build of
// kube-apiserver.
const readyWithin = 2 * time.Minute

func (f *fixture) start(t testing.TB, addr string) {
	t.Helper()
	srv, err := New(Config{
		ClusterName: "east", ClusterID: 1, ListenAddress: addr,
		ServerCertFile: f.east.ServerCert(), ServerKeyFile: f.east.ServerKey(), CAFile: f.east.CAFile(),
		AdminCertFile: f.east.AdminCert(), AdminKeyFile: f.east.AdminKey(),
		Peers: []string{"west"}, IdentityFile: f.idsFile, DataDir: f.dataDir, LeaseTTL: f.leaseTTL,
		TrustedCAFiles: f.trustedCAs, RuntimeDir: f.runtimeDir, CiliumRemoteUser: f.ciliumRemote, ExportMode: f.exportMode,
		Source: &statesource.File{Path: f.state, PollInterval: 10 * time.Millisecond},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if f.historyRetention != 0 {
		srv.cfg.historyRetention = f.historyRetention
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.srv, f.cancel, f.done = srv, cancel, make(chan error, 1)
	go func() { f.done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-f.done:
		t.Fatalf("apiserver stopped: %v", err)
	case <-time.After(readyWithin):
		t.Fatalf("apiserver not ready after %s", readyWithin)
	}
	t.Cleanup(func() { f.stop(t) })
}

func (f *fixture) stop(t testing.TB) {
	if f.cancel == nil {
		return
	}
	f.cancel()
	f.cancel = nil
	if err := <-f.done; err != nil {
		t.Errorf("apiserver Run: %v", err)
	}
}

// running fails t if the apiserver has stopped.
func (f *fixture) running(t *testing.T) {
	t.Helper()
	select {
	case err := <-f.done:
		f.cancel = nil
		t.Fatalf("apiserver stopped: %v", err)
	default:
	}
}

func client(t testing.TB, url string, tlsCfg *tls.Config) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, TLS: tlsCfg, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func clientFor(t testing.TB, url, cert, key, caFile string) *clientv3.Client {
	t.Helper()
	tlsCfg, err := ca.ClientTLSConfig(cert, key, caFile)
	if err != nil {
		t.Fatal(err)
	}
	return client(t, url, tlsCfg)
}

func get(t *testing.T, cli *clientv3.Client, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return cli.Get(ctx, key, opts...)
}

func TestPublishesClusterState(t *testing.T) {
	f := newFixture(t)
	f.start(t, "127.0.0.1:0")
	west := clientFor(t, f.srv.ClientURL(), f.west.RemoteCert(), f.west.RemoteKey(), f.west.CAFile())
	east := wire.Cluster{Name: "east", ID: 1, MaxConnectedClusters: 255}

	resp, err := get(t, west, wire.ClusterConfigKey("east"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("cluster config: %v %v", resp, err)
	}
	if resp.Kvs[0].Lease == 0 {
		t.Error("cluster config written without a lease: it would outlive the apiserver")
	}
	if c, cfg, err := wire.DecodeClusterConfig("east", 255, resp.Kvs[0].Value); err != nil || c.ID != 1 || !cfg.Capabilities.SyncedCanaries {
		t.Fatalf("cluster config %s: %v", resp.Kvs[0].Value, err)
	}
	for _, k := range wire.Kinds {
		if resp, err := get(t, west, wire.SyncedKey("east", k)); err != nil || len(resp.Kvs) != 1 {
			t.Errorf("canary %s: %v %v", k, resp, err)
		}
	}
	if resp, err := get(t, west, wire.HeartbeatKey); err != nil || len(resp.Kvs) != 1 {
		t.Errorf("heartbeat: %v %v", resp, err)
	}

	resp, err = get(t, west, wire.NodeKey("east", "east-1"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("node east-1: %v %v", resp, err)
	}
	node, err := wire.DecodeNode(east, string(resp.Kvs[0].Key), resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if addr, err := wire.HubbleAddress(node); err != nil || addr != "192.168.1.1:4245" {
		t.Errorf("node east-1 publishes Hubble address %q (%v), want the annotation's 192.168.1.1:4245", addr, err)
	}

	resp, err = get(t, west, wire.Services.ListPrefix("east"), clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("services (only the global one): %v %v", resp, err)
	}
	svc, err := wire.DecodeService(east, string(resp.Kvs[0].Key), resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if len(svc.Backends) != 1 || svc.Backends["10.1.1.10"]["http"].Port != 8080 || svc.Frontends["10.96.0.10"]["http"].Port != 80 {
		t.Errorf("checkout: want the ready backend 10.1.1.10:8080 behind 10.96.0.10:80, got %+v / %+v", svc.Backends, svc.Frontends)
	}

	resp, err = get(t, west, wire.IPCache.ListPrefix("east"), clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 3 {
		t.Fatalf("ipcache: %d entries, %v", len(resp.Kvs), err)
	}
	idsSeen := map[uint32]bool{}
	for _, kv := range resp.Kvs {
		p, err := wire.DecodeIPIdentityPair(east, string(kv.Key), kv.Value)
		if err != nil {
			t.Fatal(err)
		}
		if p.HostIP.String() != "192.168.1.1" {
			t.Errorf("%s: host IP %s", kv.Key, p.HostIP)
		}
		idsSeen[p.ID] = true
	}
	if len(idsSeen) != 2 {
		t.Errorf("want 2 identities (checkout, cart), got %v", idsSeen)
	}
	resp, err = get(t, west, wire.Identities.ListPrefix("east"), clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 2 {
		t.Fatalf("identities: %v %v", resp, err)
	}
	// Every identity carries the labels Cilium adds: its namespace's labels,
	// and its service account when the pod has one.
	for _, kv := range resp.Kvs {
		id, err := wire.DecodeIdentity(east, string(kv.Key), kv.Value)
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := id.Labels.Get(statesource.NamespaceLabelPrefix + "team"); v != "payments" {
			t.Errorf("identity %s: no namespace label team=payments", kv.Value)
		}
		app, _ := id.Labels.Get("app")
		if sa, ok := id.Labels.Get(statesource.ServiceAccountLabel); (app == "checkout") != (ok && sa == "checkout") {
			t.Errorf("identity %s: service account label %q", kv.Value, sa)
		}
	}
}

func TestRemoteUserIsReadOnly(t *testing.T) {
	f := newFixture(t)
	f.start(t, "127.0.0.1:0")
	west := clientFor(t, f.srv.ClientURL(), f.west.RemoteCert(), f.west.RemoteKey(), f.west.CAFile())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, key := range []string{wire.NodeKey("east", "evil"), wire.ClusterConfigKey("east"), wire.HeartbeatKey,
		wire.SyncedKey("east", wire.Nodes), wire.HeartbeatKey + "x", "cilium/other", "anything"} {
		if _, err := west.Put(ctx, key, "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("put %s as remote-west: %v, want permission denied", key, err)
		}
		if _, err := west.Delete(ctx, key); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("delete %s as remote-west: %v, want permission denied", key, err)
		}
	}
	if _, err := west.Delete(ctx, wire.StatePrefix, clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("delete state prefix: %v", err)
	}
	// Cilium's remote-cluster client lists the heartbeat as a prefix when it
	// connects: a single-key grant would refuse it.
	if resp, err := get(t, west, wire.HeartbeatKey, clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 1 {
		t.Errorf("list heartbeat as a prefix as remote-west: %v %v", resp, err)
	}
	for _, key := range []string{wire.ClusterConfigKey("north"), "cilium/synced/north/x", "outside"} {
		if _, err := get(t, west, key); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("read %s as remote-west: %v, want permission denied", key, err)
		}
	}
	// The admin can write.
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	if _, err := admin.Put(ctx, "cilium/admin-test", "x"); err != nil {
		t.Errorf("admin put: %v", err)
	}
	// A peer that is not configured has no user: a valid certificate is not enough.
	north, err := f.mesh.IssueBundle(filepath.Join(f.dir, "north"), "north", []string{"localhost"}, ips("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	northCli := clientFor(t, f.srv.ClientURL(), north.RemoteCert(), north.RemoteKey(), north.CAFile())
	if _, err := get(t, northCli, wire.HeartbeatKey); err == nil {
		t.Error("remote-north (not a peer) could read")
	}
}

func TestRefusesClientsWithoutMeshCertificate(t *testing.T) {
	f := newFixture(t)
	f.start(t, "127.0.0.1:0")
	pool, err := ca.LoadPool(f.east.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	noCert := client(t, f.srv.ClientURL(), &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	if _, err := get(t, noCert, wire.HeartbeatKey); err == nil {
		t.Error("a client without certificate could read")
	}
	other, err := ca.New("another CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ob, err := other.IssueBundle(filepath.Join(f.dir, "other"), "west", []string{"localhost"}, ips("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(ob.RemoteCert(), ob.RemoteKey())
	if err != nil {
		t.Fatal(err)
	}
	foreign := client(t, f.srv.ClientURL(), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if _, err := get(t, foreign, wire.HeartbeatKey); err == nil {
		t.Error("a client with a certificate of another CA (same user name) could read")
	}
}

func TestRepublishesChangesAndKeepsIdentities(t *testing.T) {
	f := newFixture(t)
	f.start(t, "127.0.0.1:0")
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	idsBefore := identityKeys(t, admin)

	// cart-a leaves; checkout-b becomes ready.
	writeFile(t, f.state, strings.NewReplacer(
		"- {namespace: shop, pod: cart-a, ip: 10.1.1.12, node: east-1, labels: {app: cart}}\n", "",
		"labels: {app: checkout}, ready: false}", "labels: {app: checkout}}").Replace(eastState))
	waitFor(t, "10.1.1.12 removed and checkout-b published", func() bool {
		ip, _ := get(t, admin, wire.IPCacheKey("10.1.1.12"))
		svc, _ := get(t, admin, wire.ServiceKey("east", "shop", "checkout"))
		return ip != nil && len(ip.Kvs) == 0 && svc != nil && len(svc.Kvs) == 1 && strings.Contains(string(svc.Kvs[0].Value), "10.1.1.11")
	})

	// Restart: the checkout identity keeps its number.
	url := f.srv.ClientURL()
	f.stop(t)
	f.start(t, strings.TrimPrefix(url, "https://"))
	admin = clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	after := identityKeys(t, admin)
	for k, v := range after {
		if strings.Contains(v, "app=checkout") && idsBefore[k] != v {
			t.Errorf("checkout identity changed across restart: before %v, after %v", idsBefore, after)
		}
	}
	if len(after) != 1 {
		t.Errorf("want only the checkout identity published after cart left, got %v", after)
	}
}

func identityKeys(t *testing.T, cli *clientv3.Client) map[string]string {
	t.Helper()
	resp, err := get(t, cli, wire.Identities.ListPrefix(""), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

func TestConfigValidate(t *testing.T) {
	good := Config{ClusterName: "east", ClusterID: 1, ServerCertFile: "s", ServerKeyFile: "k", CAFile: "c",
		AdminCertFile: "a", AdminKeyFile: "b", Source: &statesource.File{Path: "x"}}
	if _, err := New(good); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for name, mut := range map[string]func(*Config){
		"bad name":  func(c *Config) { c.ClusterName = "East" },
		"id 0":      func(c *Config) { c.ClusterID = 0 },
		"id 256":    func(c *Config) { c.ClusterID = 256 },
		"no ca":     func(c *Config) { c.CAFile = "" },
		"bad peer":  func(c *Config) { c.Peers = []string{"-x"} },
		"no source": func(c *Config) { c.Source = nil },
		"short ttl": func(c *Config) { c.LeaseTTL = time.Second },
		"max 300":   func(c *Config) { c.MaxConnectedClusters = 300 },
	} {
		c := good
		mut(&c)
		if _, err := New(c); !errors.Is(err, ErrInvalidConfig) && !errors.Is(err, wire.ErrIncompatibleConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func ips(s ...string) []net.IP {
	out := make([]net.IP, len(s))
	for i, v := range s {
		out[i] = net.ParseIP(v)
	}
	return out
}

// With a persistent data dir, a restart finds the previous run's entries on
// a lease nobody keeps alive: every one must be rewritten on the new lease,
// or it would expire with the old one.
func TestRestartWithDataDirMovesEntriesToNewLease(t *testing.T) {
	f := newFixture(t)
	dataDir := filepath.Join(f.dir, "etcd")
	f.dataDir = dataDir
	f.start(t, "127.0.0.1:0")
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	leasesOf := func(cli *clientv3.Client) map[int64]int {
		resp, err := get(t, cli, wire.StatePrefix, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		out := map[int64]int{}
		for _, kv := range resp.Kvs {
			out[kv.Lease]++
		}
		return out
	}
	before := leasesOf(admin)
	if len(before) != 1 {
		t.Fatalf("entries on %d leases, want 1: %v", len(before), before)
	}
	url := f.srv.ClientURL()
	f.stop(t)
	f.start(t, strings.TrimPrefix(url, "https://"))
	admin = clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	after := leasesOf(admin)
	for lease, n := range after {
		if _, old := before[lease]; old {
			t.Errorf("%d entries still on the previous run's lease %x", n, lease)
		}
	}
	if len(after) != 1 {
		t.Errorf("entries on %d leases after the restart, want 1: %v", len(after), after)
	}
}

func TestMetricsCollector(t *testing.T) {
	f := newFixture(t)
	f.start(t, "127.0.0.1:0")
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(f.srv))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetGauge() != nil:
				got[mf.GetName()] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				got[mf.GetName()] += m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				got[mf.GetName()] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	for name, want := range map[string]float64{
		"clustermesh_apiserver_entries_published": 7, "clustermesh_apiserver_synced_canaries": 1,
		"clustermesh_apiserver_writes_total": 7,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
	if got["clustermesh_apiserver_transaction_duration_seconds"] < 1 || got["clustermesh_apiserver_transactions_total"] < 1 {
		t.Errorf("no transaction observed: %v", got)
	}
}

// A change that replaces entries by others is one transaction: the agents
// see the new entries and the removals at one revision, the puts first, so
// no still-valid entry is ever missing and no intermediate state exists.
func TestChangeIsOneTransactionPutsFirst(t *testing.T) {
	f := newFixture(t)
	f.start(t, "127.0.0.1:0")
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := admin.Watch(ctx, "cilium/state/", clientv3.WithPrefix())
	// cart-a leaves (its ipcache entry and identity go); checkout-b becomes
	// ready (the service entry changes).
	writeFile(t, f.state, strings.NewReplacer(
		"- {namespace: shop, pod: cart-a, ip: 10.1.1.12, node: east-1, labels: {app: cart}}\n", "",
		"labels: {app: checkout}, ready: false}", "labels: {app: checkout}}").Replace(eastState))
	var events []*clientv3.Event
	deadline := time.After(10 * time.Second)
	for len(events) < 3 {
		select {
		case resp := <-w:
			events = append(events, resp.Events...)
		case <-deadline:
			t.Fatalf("got %d events, want the service put and two deletes", len(events))
		}
	}
	rev := events[0].Kv.ModRevision
	seenDelete := false
	for _, ev := range events {
		if ev.Kv.ModRevision != rev {
			t.Errorf("event %s %s at revision %d, want all at %d (one transaction)", ev.Type, ev.Kv.Key, ev.Kv.ModRevision, rev)
		}
		if ev.Type == clientv3.EventTypeDelete {
			seenDelete = true
		} else if seenDelete {
			t.Errorf("put %s after a delete in the transaction", ev.Kv.Key)
		}
	}
}

// gather returns the server's metrics, counters summed over labels.
func gather(t *testing.T, s *Server) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(s))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetGauge() != nil:
				got[mf.GetName()] += m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				got[mf.GetName()] += m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				got[mf.GetName()] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return got
}

// endedSource ends at once without delivering a state.
type endedSource struct{}

func (endedSource) Run(context.Context, func(*statesource.State)) error { return nil }

// TestBadStartFailsBeforeListening: a state, state file or identity store
// that cannot be read fails Run before etcd starts: the error names what
// was being done and the file, with no package name stacked in front, no
// runtime directory was created, and the listen address, held by the test,
// was never tried (etcd would have failed on it with another error).
func TestBadStartFailsBeforeListening(t *testing.T) {
	f := newFixture(t)
	missing := filepath.Join(f.dir, "missing.yaml")
	invalid := filepath.Join(f.dir, "invalid.yaml")
	writeFile(t, invalid, "nodes:\n- {name: east-1}\n")
	garbled := filepath.Join(f.dir, "garbled.yaml")
	writeFile(t, garbled, "nodes: [\n")
	badIDs := filepath.Join(f.dir, "bad-identities.json")
	writeFile(t, badIDs, "{")
	file := func(path string) statesource.Source { return &statesource.File{Path: path} }
	for name, tc := range map[string]struct {
		src     statesource.Source
		idsFile string
		want    []string
	}{
		"missing state file": {src: file(missing), want: []string{`reading state file "` + missing + `": open ` + missing + ": no such file or directory"}},
		"invalid state file": {src: file(invalid), want: []string{`checking state file "` + invalid + `": invalid state: `, `node "east-1": no ips`}},
		"garbled state file": {src: file(garbled), want: []string{`parsing state file "` + garbled + `": `}},
		"bad identities":     {src: file(f.state), idsFile: badIDs, want: []string{"loading the stored identities: parsing " + badIDs + ": ", "fix or remove it"}},
		"source ended":       {src: endedSource{}, want: []string{"reading the cluster's state: the source ended without delivering one"}},
	} {
		t.Run(name, func(t *testing.T) {
			held, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer held.Close()
			runtimeDir := filepath.Join(t.TempDir(), "run")
			srv, err := New(Config{
				ClusterName: "east", ClusterID: 1, ListenAddress: held.Addr().String(), RuntimeDir: runtimeDir,
				ServerCertFile: f.east.ServerCert(), ServerKeyFile: f.east.ServerKey(), CAFile: f.east.CAFile(),
				AdminCertFile: f.east.AdminCert(), AdminKeyFile: f.east.AdminKey(), IdentityFile: tc.idsFile,
				Source: tc.src, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- srv.Run(context.Background()) }()
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("Run did not return")
			}
			if err == nil {
				t.Fatal("Run returned no error")
			}
			msg := err.Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q, want it to say %q", msg, w)
				}
			}
			for _, pkg := range []string{"meshapiserver:", "statesource:", "apiserver:", "wire:", "ca:"} {
				if strings.Contains(msg, pkg) {
					t.Errorf("error %q names the package %q instead of what was done", msg, pkg)
				}
			}
			if _, err := os.Stat(runtimeDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("runtime directory %s: %v, want none created", runtimeDir, err)
			}
			select {
			case <-srv.Serving():
				t.Error("Serving closed")
			default:
			}
			if srv.ClientURL() != "" {
				t.Errorf("ClientURL %q, want none", srv.ClientURL())
			}
		})
	}
}
