package interop

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/cilium/pkg/allocator"
	"github.com/cilium/cilium/pkg/clustermesh/clustercfg"
	serviceStore "github.com/cilium/cilium/pkg/clustermesh/store"
	cmtypes "github.com/cilium/cilium/pkg/clustermesh/types"
	"github.com/cilium/cilium/pkg/identity"
	"github.com/cilium/cilium/pkg/identity/key"
	"github.com/cilium/cilium/pkg/idpool"
	k8sutils "github.com/cilium/cilium/pkg/k8s/utils"
	"github.com/cilium/cilium/pkg/kvstore"
	kvstoreallocator "github.com/cilium/cilium/pkg/kvstore/allocator"
	"github.com/cilium/cilium/pkg/kvstore/store"
	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/labelsfilter"
	"github.com/cilium/cilium/pkg/loadbalancer"
	nodeStore "github.com/cilium/cilium/pkg/node/store"
	nodeTypes "github.com/cilium/cilium/pkg/node/types"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/meshapiserver"
	"github.com/clustermesh/clustermesh/statesource"
)

// The published cluster: its name and id, as a Cilium agent of another
// cluster is configured to expect them.
const (
	clusterName = "east"
	clusterID   = 3
)

const stateBefore = `
nodes:
- name: east-1
  ips: [192.168.1.1]
  podCIDRs: [10.1.1.0/24]
- name: east-2
  ips: [192.168.1.2, 192.168.2.2]
  podCIDRs: [10.1.2.0/24, fd00:1:2::/64]
namespaces:
- {name: shop, labels: {team: payments, env: prod}}
endpoints:
- {namespace: shop, pod: checkout-a, ip: 10.1.1.10, node: east-1, serviceAccount: checkout, labels: {app: checkout}}
- {namespace: shop, pod: checkout-b, ip: 10.1.2.10, node: east-2, serviceAccount: checkout, labels: {app: checkout}}
- {namespace: shop, pod: cart-a, ip: 10.1.1.20, node: east-1, labels: {app: cart, io.cilium.k8s.policy.cluster: west}}
- {namespace: default, pod: tools-a, ip: 10.1.2.30, node: east-2, labels: {app: tools}}
services:
- namespace: shop
  name: checkout
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
  selector: {app: checkout}
  labels: {tier: front}
  annotations: {service.cilium.io/global: "true"}
- namespace: shop
  name: cart
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}]
  selector: {app: cart}
`

// stateAfter: checkout-c added, tools-a removed, checkout-a unready.
const stateAfter = `
nodes:
- name: east-1
  ips: [192.168.1.1]
  podCIDRs: [10.1.1.0/24]
- name: east-2
  ips: [192.168.1.2, 192.168.2.2]
  podCIDRs: [10.1.2.0/24, fd00:1:2::/64]
namespaces:
- {name: shop, labels: {team: payments, env: prod}}
endpoints:
- {namespace: shop, pod: checkout-a, ip: 10.1.1.10, node: east-1, serviceAccount: checkout, labels: {app: checkout}, ready: false}
- {namespace: shop, pod: checkout-b, ip: 10.1.2.10, node: east-2, serviceAccount: checkout, labels: {app: checkout}}
- {namespace: shop, pod: checkout-c, ip: 10.1.2.11, node: east-2, serviceAccount: checkout, labels: {app: checkout}}
- {namespace: shop, pod: cart-a, ip: 10.1.1.20, node: east-1, labels: {app: cart, io.cilium.k8s.policy.cluster: west}}
services:
- namespace: shop
  name: checkout
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
  selector: {app: checkout}
  labels: {tier: front}
  annotations: {service.cilium.io/global: "true"}
- namespace: shop
  name: cart
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}]
  selector: {app: cart}
`

// IdentitiesPath of pkg/identity/cache and IPIdentitiesPath of pkg/ipcache
// (with its DefaultAddressSpace "default"): both packages import Cilium's
// Kubernetes client, which does not build with the client-go of our module.
var (
	identitiesPath   = kvstore.JoinKey(kvstore.BaseKeyPrefix, "state", "identities", "v1")
	ipIdentitiesPath = kvstore.JoinKey(kvstore.BaseKeyPrefix, "state", "ip", "v1")
)

// What the state files say, in the terms a Cilium agent sees them.
type wantNode struct {
	ips         []string
	ipv4, ipv6  string
	hostForPods string
}

type wantEndpoint struct {
	namespace, pod, node string
	serviceAccount       string
	labels               map[string]string
}

var (
	wantNodes = map[string]wantNode{
		"east-1": {ips: []string{"192.168.1.1"}, ipv4: "10.1.1.0/24", hostForPods: "192.168.1.1"},
		"east-2": {ips: []string{"192.168.1.2", "192.168.2.2"}, ipv4: "10.1.2.0/24", ipv6: "fd00:1:2::/64", hostForPods: "192.168.1.2"},
	}
	namespaceLabels = map[string]map[string]string{"shop": {"team": "payments", "env": "prod"}}

	checkoutA = wantEndpoint{"shop", "checkout-a", "east-1", "checkout", map[string]string{"app": "checkout"}}
	checkoutB = wantEndpoint{"shop", "checkout-b", "east-2", "checkout", map[string]string{"app": "checkout"}}
	checkoutC = wantEndpoint{"shop", "checkout-c", "east-2", "checkout", map[string]string{"app": "checkout"}}
	cartA     = wantEndpoint{"shop", "cart-a", "east-1", "", map[string]string{"app": "cart", "io.cilium.k8s.policy.cluster": "west"}}
	toolsA    = wantEndpoint{"default", "tools-a", "east-2", "", map[string]string{"app": "tools"}}

	wantBefore = wantState{
		endpoints: map[string]wantEndpoint{"10.1.1.10": checkoutA, "10.1.2.10": checkoutB, "10.1.1.20": cartA, "10.1.2.30": toolsA},
		backends:  []string{"10.1.1.10", "10.1.2.10"},
	}
	wantAfter = wantState{
		endpoints: map[string]wantEndpoint{"10.1.1.10": checkoutA, "10.1.2.10": checkoutB, "10.1.2.11": checkoutC, "10.1.1.20": cartA},
		backends:  []string{"10.1.2.10", "10.1.2.11"},
	}
)

type wantState struct {
	endpoints map[string]wantEndpoint // by IP
	backends  []string                // of shop/checkout
}

// TestCiliumReadsOurApiserver starts our apiserver and reads it as a Cilium
// agent of another cluster does: Cilium's etcd client with the shared
// remote user's certificate (its connection lists the heartbeat), the
// cluster config through clustercfg.Get and ValidateRemoteConfig, Cilium's
// watch store manager waiting on each kind's synced canary, and Cilium's
// watch stores with the key creators and validators its remote-cluster
// client registers (nodes, services, ipcache entries) and its identity
// allocator backend (identities). Every value must be accepted, and what
// arrives must be what the state file says, before and after a change.
func TestCiliumReadsOurApiserver(t *testing.T) {
	// The agent's identity-relevant label filter, as with no --labels
	// option (GetCIDKeyFromLabels applies it).
	if err := labelsfilter.ParseLabelPrefixCfg(slog.New(slog.NewTextHandler(io.Discard, nil)), nil, nil, ""); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mesh, err := ca.New("interop test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := mesh.IssueBundle(filepath.Join(dir, clusterName), clusterName, []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	remote, err := mesh.IssueClient("remote")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Save(filepath.Join(dir, "cilium"), "remote"); err != nil {
		t.Fatal(err)
	}
	statePath := filepath.Join(dir, "east.yaml")
	writeFile(t, statePath, stateBefore)

	srv, err := meshapiserver.New(meshapiserver.Config{
		ClusterName: clusterName, ClusterID: clusterID, ListenAddress: "127.0.0.1:0",
		ServerCertFile: bundle.ServerCert(), ServerKeyFile: bundle.ServerKey(), CAFile: bundle.CAFile(),
		AdminCertFile: bundle.AdminCert(), AdminKeyFile: bundle.AdminKey(),
		Peers: []string{"west"}, CiliumRemoteUser: true, RuntimeDir: filepath.Join(dir, "run"),
		Source: &statesource.File{Path: statePath, PollInterval: 10 * time.Millisecond},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	srvCtx, srvCancel := context.WithCancel(context.Background())
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Run(srvCtx) }()
	t.Cleanup(func() {
		srvCancel()
		if err := <-srvDone; err != nil {
			t.Errorf("apiserver Run: %v", err)
		}
	})
	select {
	case <-srv.Ready():
	case err := <-srvDone:
		srvDone <- err
		t.Fatalf("apiserver stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("apiserver not ready after 30s")
	}

	// Cilium's etcd configuration file for a remote cluster, as in its
	// clustermesh secret: the endpoint, the CA and the remote certificate.
	etcdConfig := filepath.Join(dir, "cilium", clusterName)
	writeFile(t, etcdConfig, fmt.Sprintf("endpoints:\n- %s\ntrusted-ca-file: %s\ncert-file: %s\nkey-file: %s\n",
		srv.ClientURL(), bundle.CAFile(), filepath.Join(dir, "cilium", "remote.crt"), filepath.Join(dir, "cilium", "remote.key")))

	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg      sync.WaitGroup
		backend kvstore.BackendOperations
	)
	// The stores stop before the client closes, the client before the
	// apiserver stops.
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if backend != nil {
			backend.Close()
		}
	})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	var errCh chan error
	// The options of remoteCluster.makeExtraOpts (pkg/clustermesh/common),
	// without its cluster-lock interceptors and dialer.
	backend, errCh = kvstore.NewClient(ctx, quiet, kvstore.EtcdBackendName,
		map[string]string{kvstore.EtcdOptionConfig: etcdConfig},
		kvstore.ExtraOptions{NoLockQuorumCheck: true, ClusterName: clusterName, NoEndpointStatusChecks: true})
	// The client reports a connection once it has listed the heartbeat
	// prefix (etcdClient.asyncConnectEtcdClient).
	select {
	case err := <-errCh:
		if err != nil {
			t.Fatalf("Cilium's etcd client did not connect: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Cilium's etcd client not connected after 30s")
	}

	hb, err := backend.Get(ctx, kvstore.HeartbeatPath)
	if err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	if _, err := time.Parse(time.RFC3339, string(hb)); err != nil {
		t.Errorf("heartbeat %q: %v", hb, err)
	}

	// The cluster config, as remoteCluster.getClusterConfig reads it, and
	// validated as an agent running with 255 clusters validates it.
	cfg, err := clustercfg.Get(ctx, clusterName, backend)
	if err != nil {
		t.Fatalf("clustercfg.Get: %v", err)
	}
	local := cmtypes.ClusterInfo{ID: 7, Name: "west", MaxConnectedClusters: 255}
	if err := local.ValidateRemoteConfig(cfg); err != nil {
		t.Errorf("ValidateRemoteConfig (255 clusters) refuses %+v: %v", cfg, err)
	}
	if cfg.ID != clusterID || !cfg.Capabilities.SyncedCanaries || cfg.Capabilities.Cached {
		t.Errorf("cluster config %+v: want id %d, synced canaries, not cached", cfg, clusterID)
	}
	if m := cfg.Capabilities.MaxConnectedClusters; m != 0 && m != 255 {
		t.Errorf("cluster config: maxConnectedClusters %d, want 255 (or absent)", m)
	}
	if err := (cmtypes.ClusterInfo{ID: 7, Name: "west", MaxConnectedClusters: 511}).ValidateRemoteConfig(cfg); err == nil {
		t.Error("ValidateRemoteConfig (511 clusters) accepts a 255-cluster config")
	}

	// Everything that follows reads through Cilium's watch store machinery;
	// a value it cannot unmarshal or validate is logged as a warning, which
	// fails the test.
	v := newView()
	storeLog := slog.New(&warnRecorder{v: v})
	factory := store.NewFactory(storeLog, store.MetricsProvider())
	id := uint32(clusterID)
	// A store's Synced turns true before its sync callbacks run: each one
	// wakes waitFor.
	synced := store.RWSWithOnSyncCallback(func(context.Context) { v.update(func() {}) })
	nodes := factory.NewWatchStore(clusterName,
		nodeStore.ValidatingKeyCreator(nodeStore.ClusterNameValidator(clusterName), nodeStore.NameValidator(), nodeStore.ClusterIDValidator(&id)),
		observer{v, "node"}, synced)
	services := factory.NewWatchStore(clusterName,
		serviceStore.KeyCreator(serviceStore.ClusterNameValidator(clusterName), serviceStore.NamespacedNameValidator(), serviceStore.ClusterIDValidator(&id)),
		observer{v, "service"}, synced)
	ips := factory.NewWatchStore(clusterName, func() store.Key { return &identity.IPIdentityPair{} }, observer{v, "ip"}, synced)
	ids, err := kvstoreallocator.NewKVStoreBackend(storeLog, kvstoreallocator.KVStoreBackendConfiguration{
		BasePath: identitiesPath, Typ: &key.GlobalIdentity{}, Backend: backend,
	})
	if err != nil {
		t.Fatal(err)
	}

	// As remoteCluster.Run (pkg/clustermesh): each kind starts once its
	// synced canary is there. The manager runs each in a goroutine of its
	// own, and its Run returns when all have.
	mgr := factory.NewWatchStoreManager(backend, clusterName)
	mgr.Register(nodeStore.NodeStorePrefix, func(ctx context.Context) {
		nodes.Watch(ctx, backend, kvstore.JoinKey(nodeStore.NodeStorePrefix, clusterName))
	})
	mgr.Register(serviceStore.ServiceStorePrefix, func(ctx context.Context) {
		services.Watch(ctx, backend, kvstore.JoinKey(serviceStore.ServiceStorePrefix, clusterName))
	})
	mgr.Register(ipIdentitiesPath, func(ctx context.Context) {
		ips.Watch(ctx, backend, kvstore.JoinKey(ipIdentitiesPath, "default"))
	})
	mgr.Register(identitiesPath, func(ctx context.Context) {
		ids.ListAndWatch(ctx, identityHandler{v})
	})
	wg.Add(1)
	go func() { defer wg.Done(); mgr.Run(ctx) }()

	v.waitFor(t, "every kind synced", func(*view) error {
		switch {
		case !nodes.Synced():
			return fmt.Errorf("nodes not synced")
		case !services.Synced():
			return fmt.Errorf("services not synced")
		case !ips.Synced():
			return fmt.Errorf("ipcache not synced")
		case !v.idsSynced:
			return fmt.Errorf("identities not synced")
		}
		return nil
	})

	v.waitFor(t, "the first state", func(v *view) error { return v.check(wantBefore) })
	writeFile(t, statePath, stateAfter)
	v.waitFor(t, "the changed state", func(v *view) error { return v.check(wantAfter) })

	v.mu.Lock()
	defer v.mu.Unlock()
	for _, w := range v.warnings {
		t.Errorf("Cilium rejected: %s", w)
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

// view is what the Cilium stores delivered, keyed as Cilium keys it.
type view struct {
	mu        sync.Mutex
	changed   chan struct{}
	nodes     map[string]nodeTypes.Node
	services  map[string]serviceStore.ClusterService
	ips       map[string]identity.IPIdentityPair
	ids       map[idpool.ID]labels.LabelArray
	idsSynced bool
	warnings  []string
}

func newView() *view {
	return &view{
		changed: make(chan struct{}, 1),
		nodes:   map[string]nodeTypes.Node{}, services: map[string]serviceStore.ClusterService{},
		ips: map[string]identity.IPIdentityPair{}, ids: map[idpool.ID]labels.LabelArray{},
	}
}

func (v *view) update(f func()) {
	v.mu.Lock()
	f()
	v.mu.Unlock()
	select {
	case v.changed <- struct{}{}:
	default:
	}
}

// waitFor waits until cond holds (checked under the lock after every
// change) or fails t after a deadline with cond's last complaint.
func (v *view) waitFor(t *testing.T, what string, cond func(*view) error) {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		v.mu.Lock()
		err := cond(v)
		warnings := slices.Clone(v.warnings)
		v.mu.Unlock()
		if len(warnings) > 0 {
			t.Fatalf("waiting for %s: Cilium rejected: %s", what, strings.Join(warnings, "; "))
		}
		if err == nil {
			return
		}
		select {
		case <-v.changed:
		case <-deadline.C:
			t.Fatalf("waiting for %s: after 30s: %v", what, err)
		}
	}
}

// check compares the view with want: every node with its addresses and
// pod CIDRs, every endpoint's IP with its host and identity, every
// identity's labels as Cilium builds them for the pod, the global service
// with its frontend and backends. The first difference is the error.
func (v *view) check(want wantState) error {
	// Nodes.
	if got := slices.Sorted(maps.Keys(v.nodes)); !slices.Equal(got, slices.Sorted(maps.Keys(wantNodes))) {
		return fmt.Errorf("nodes %v, want %v", got, slices.Sorted(maps.Keys(wantNodes)))
	}
	for name, wn := range wantNodes {
		n := v.nodes[name]
		var addrs []string
		for _, a := range n.IPAddresses {
			if a.Type != "InternalIP" {
				return fmt.Errorf("node %s: address %s of type %s, want InternalIP", name, a.IP, a.Type)
			}
			addrs = append(addrs, a.IP.String())
		}
		if !slices.Equal(addrs, wn.ips) {
			return fmt.Errorf("node %s: addresses %v, want %v", name, addrs, wn.ips)
		}
		if ip := n.GetNodeIP(false); ip.String() != wn.hostForPods {
			return fmt.Errorf("node %s: Cilium's node IP %s, want %s", name, ip, wn.hostForPods)
		}
		if got := cidrString(n.IPv4AllocCIDR.String()); got != wn.ipv4 {
			return fmt.Errorf("node %s: IPv4AllocCIDR %s, want %s", name, got, wn.ipv4)
		}
		if got := cidrString(n.IPv6AllocCIDR.String()); got != wn.ipv6 {
			return fmt.Errorf("node %s: IPv6AllocCIDR %s, want %q", name, got, wn.ipv6)
		}
		if n.Cluster != clusterName || n.ClusterID != clusterID {
			return fmt.Errorf("node %s: cluster %s/%d", name, n.Cluster, n.ClusterID)
		}
	}

	// ipcache entries and the identities they name.
	if got, w := slices.Sorted(maps.Keys(v.ips)), slices.Sorted(maps.Keys(want.endpoints)); !slices.Equal(got, w) {
		return fmt.Errorf("ipcache keys %v, want %v", got, w)
	}
	minID, maxID := identity.GetMinimalAllocationIdentity(clusterID), identity.GetMaximumAllocationIdentity(clusterID)
	usedIDs := map[idpool.ID]bool{}
	for ip, we := range want.endpoints {
		p := v.ips[ip]
		// ipcache.WithIdentityValidator(clusterID).
		if p.ID < minID || p.ID > maxID {
			return fmt.Errorf("ipcache %s: identity %d outside cluster %d's range %d..%d", ip, p.ID, clusterID, minID, maxID)
		}
		if p.ID.ClusterID() != clusterID {
			return fmt.Errorf("ipcache %s: identity %d of cluster %d", ip, p.ID, p.ID.ClusterID())
		}
		if p.IP.String() != ip || p.HostIP.String() != wantNodes[we.node].hostForPods {
			return fmt.Errorf("ipcache %s: IP %s host %s, want host %s", ip, p.IP, p.HostIP, wantNodes[we.node].hostForPods)
		}
		if p.K8sNamespace != we.namespace || p.K8sPodName != we.pod {
			return fmt.Errorf("ipcache %s: pod %s/%s, want %s/%s", ip, p.K8sNamespace, p.K8sPodName, we.namespace, we.pod)
		}
		got, ok := v.ids[idpool.ID(p.ID)]
		if !ok {
			return fmt.Errorf("ipcache %s: identity %d not published", ip, p.ID)
		}
		// The labels a Cilium agent of this cluster gives the pod
		// (k8sutils.SanitizePodLabels), as the allocator key it stores.
		wantKey := key.GetCIDKeyFromLabels(k8sutils.SanitizePodLabels(we.labels, namespace(we.namespace), we.serviceAccount, clusterName), labels.LabelSourceK8s)
		if g, w := (&key.GlobalIdentity{LabelArray: got}).GetKey(), wantKey.GetKey(); g != w {
			return fmt.Errorf("identity %d of %s/%s: labels %s, want %s", p.ID, we.namespace, we.pod, g, w)
		}
		usedIDs[idpool.ID(p.ID)] = true
	}
	if len(usedIDs) != len(v.ids) {
		return fmt.Errorf("identities %v published, endpoints use %v", slices.Sorted(maps.Keys(v.ids)), slices.Sorted(maps.Keys(usedIDs)))
	}
	for id, ls := range v.ids {
		if id < idpool.ID(minID) || id > idpool.ID(maxID) {
			return fmt.Errorf("identity %d outside cluster %d's range", id, clusterID)
		}
		if err := clusterLabel(ls); err != nil {
			return fmt.Errorf("identity %d: %w", id, err)
		}
	}

	// The one global service.
	if got := slices.Sorted(maps.Keys(v.services)); !slices.Equal(got, []string{"shop/checkout"}) {
		return fmt.Errorf("services %v, want [shop/checkout]", got)
	}
	s := v.services["shop/checkout"]
	if !s.Shared || s.Labels["tier"] != "front" || s.Selector["app"] != "checkout" {
		return fmt.Errorf("service shop/checkout: shared %v labels %v selector %v", s.Shared, s.Labels, s.Selector)
	}
	if err := ports(s.Frontends, []string{"10.96.0.10"}, 80); err != nil {
		return fmt.Errorf("service shop/checkout frontends: %w", err)
	}
	if err := ports(s.Backends, want.backends, 8080); err != nil {
		return fmt.Errorf("service shop/checkout backends: %w", err)
	}
	return nil
}

// cidrString normalises cidr.CIDR's String of a nil CIDR ("<nil>") to "".
func cidrString(s string) string {
	if s == "<nil>" {
		return ""
	}
	return s
}

// ports checks that m has exactly the addresses given, each with the one
// TCP port named http.
func ports(m map[string]serviceStore.PortConfiguration, addrs []string, port uint16) error {
	if got := slices.Sorted(maps.Keys(m)); !slices.Equal(got, addrs) {
		return fmt.Errorf("addresses %v, want %v", got, addrs)
	}
	for a, pc := range m {
		if len(pc) != 1 || pc["http"] == nil || pc["http"].Protocol != loadbalancer.TCP || pc["http"].Port != port {
			return fmt.Errorf("%s: ports %v, want http %d/TCP", a, pc, port)
		}
	}
	return nil
}

// clusterLabel is the check of clusterNameValidator
// (pkg/identity/cache/allocator.go, unexported there).
func clusterLabel(ls labels.LabelArray) error {
	found := false
	for _, l := range ls {
		if l.Key != "io.cilium.k8s.policy.cluster" {
			continue
		}
		if l.Source != labels.LabelSourceK8s || l.Value != clusterName {
			return fmt.Errorf("cluster label %v, want k8s:io.cilium.k8s.policy.cluster=%s", l, clusterName)
		}
		found = true
	}
	if !found {
		return fmt.Errorf("no cluster label in %s", ls)
	}
	return nil
}

// namespace is what SanitizePodLabels reads of a Namespace.
type namespace string

func (n namespace) GetName() string              { return string(n) }
func (n namespace) GetLabels() map[string]string { return namespaceLabels[string(n)] }

// observer records a watch store's entries under the keys Cilium's
// observers use.
type observer struct {
	v    *view
	kind string
}

func (o observer) OnUpdate(k store.Key) {
	o.v.update(func() {
		switch e := k.(type) {
		case *nodeStore.ValidatingNode:
			o.v.nodes[e.Name] = e.Node
		case *serviceStore.ValidatingClusterService:
			o.v.services[e.NamespaceServiceName().String()] = e.ClusterService
		case *identity.IPIdentityPair:
			o.v.ips[e.GetKeyName()] = *e
		default:
			o.v.warnings = append(o.v.warnings, fmt.Sprintf("%s: unexpected key type %T", o.kind, k))
		}
	})
}

func (o observer) OnDelete(k store.NamedKey) {
	o.v.update(func() {
		switch e := k.(type) {
		case *nodeStore.ValidatingNode:
			delete(o.v.nodes, e.Name)
		case *serviceStore.ValidatingClusterService:
			delete(o.v.services, e.NamespaceServiceName().String())
		case *identity.IPIdentityPair:
			delete(o.v.ips, e.GetKeyName())
		default:
			o.v.warnings = append(o.v.warnings, fmt.Sprintf("%s: unexpected key type %T", o.kind, k))
		}
	})
}

// identityHandler receives the allocator backend's events, as the remote
// identity cache does.
type identityHandler struct{ v *view }

func (h identityHandler) OnListDone() { h.v.update(func() { h.v.idsSynced = true }) }

func (h identityHandler) OnUpsert(id idpool.ID, k allocator.AllocatorKey) {
	h.v.update(func() {
		gi, ok := k.(*key.GlobalIdentity)
		if !ok {
			h.v.warnings = append(h.v.warnings, fmt.Sprintf("identity %d: key type %T", id, k))
			return
		}
		h.v.ids[id] = gi.LabelArray
	})
}

func (h identityHandler) OnDelete(id idpool.ID, _ allocator.AllocatorKey) {
	h.v.update(func() { delete(h.v.ids, id) })
}

// warnRecorder is the slog handler of the Cilium stores: what they log at
// warning level or above (a value they could not unmarshal or that failed
// a validator, a key outside the layout) is a rejection.
type warnRecorder struct {
	v     *view
	attrs []slog.Attr
}

func (w *warnRecorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (w *warnRecorder) Handle(_ context.Context, r slog.Record) error {
	var parts []string
	for _, a := range w.attrs {
		parts = append(parts, a.String())
	}
	r.Attrs(func(a slog.Attr) bool { parts = append(parts, a.String()); return true })
	sort.Strings(parts)
	w.v.update(func() { w.v.warnings = append(w.v.warnings, r.Message+" "+strings.Join(parts, " ")) })
	return nil
}

func (w *warnRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &warnRecorder{v: w.v, attrs: append(slices.Clone(w.attrs), as...)}
}

func (w *warnRecorder) WithGroup(string) slog.Handler { return w }
