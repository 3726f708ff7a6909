package interop

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/cilium/pkg/cidr"
	"github.com/cilium/cilium/pkg/clustermesh/clustercfg"
	serviceStore "github.com/cilium/cilium/pkg/clustermesh/store"
	cmtypes "github.com/cilium/cilium/pkg/clustermesh/types"
	"github.com/cilium/cilium/pkg/identity"
	"github.com/cilium/cilium/pkg/identity/key"
	k8sutils "github.com/cilium/cilium/pkg/k8s/utils"
	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/labelsfilter"
	"github.com/cilium/cilium/pkg/loadbalancer"
	"github.com/cilium/cilium/pkg/node/addressing"
	nodeTypes "github.com/cilium/cilium/pkg/node/types"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/portlock"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// The Cilium cluster (east, id 3, as in cilium_reads_test.go) and the
// cluster of our agent, whose global service shop/checkout the Cilium
// cluster's backends join.
const (
	ourName = "west"
	ourID   = 7
	ourFE   = "10.97.0.10"
)

const ourState = `
nodes:
- name: west-1
  ips: [192.168.9.1]
  podCIDRs: [10.9.1.0/24]
endpoints:
- {namespace: shop, pod: checkout-w, ip: 10.9.1.10, node: west-1, labels: {app: checkout}}
services:
- namespace: shop
  name: checkout
  clusterIP: 10.97.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
  selector: {app: checkout}
  annotations: {service.cilium.io/global: "true"}
`

// ciliumPod is a pod of the Cilium cluster, as its CiliumEndpoint says.
type ciliumPod struct {
	namespace, name, ip, node, serviceAccount string
	labels                                    map[string]string
	ready                                     bool
}

// The Cilium cluster's nodes, as the clustermesh-apiserver converts their
// CiliumNodes (k8s.ParseCiliumNode).
var eastNodes = map[string]nodeTypes.Node{
	"east-1": {
		Name: "east-1", Cluster: clusterName, ClusterID: clusterID,
		IPAddresses: []nodeTypes.Address{
			{Type: addressing.NodeInternalIP, IP: net.ParseIP("192.168.1.1")},
			{Type: addressing.NodeCiliumInternalIP, IP: net.ParseIP("10.1.1.1")},
		},
		IPv4AllocCIDR: cidr.MustParseCIDR("10.1.1.0/24"), IPv4HealthIP: net.ParseIP("10.1.1.2"),
		Labels: map[string]string{"kubernetes.io/hostname": "east-1"},
	},
	"east-2": {
		Name: "east-2", Cluster: clusterName, ClusterID: clusterID,
		IPAddresses: []nodeTypes.Address{
			{Type: addressing.NodeInternalIP, IP: net.ParseIP("192.168.1.2")},
			{Type: addressing.NodeCiliumInternalIP, IP: net.ParseIP("10.1.2.1")},
		},
		IPv4AllocCIDR: cidr.MustParseCIDR("10.1.2.0/24"), IPv6AllocCIDR: cidr.MustParseCIDR("fd00:1:2::/64"),
		Labels: map[string]string{"kubernetes.io/hostname": "east-2"},
	},
}

var eastNamespaceLabels = map[string]map[string]string{"shop": {"team": "payments"}}

var (
	podCheckoutA = ciliumPod{"shop", "checkout-a", "10.1.1.10", "east-1", "checkout", map[string]string{"app": "checkout"}, true}
	podCheckoutB = ciliumPod{"shop", "checkout-b", "10.1.2.10", "east-2", "checkout", map[string]string{"app": "checkout"}, true}
	podCheckoutC = ciliumPod{"shop", "checkout-c", "10.1.2.11", "east-2", "checkout", map[string]string{"app": "checkout"}, true}
	podCartA     = ciliumPod{"shop", "cart-a", "10.1.1.20", "east-1", "", map[string]string{"app": "cart"}, true}
	podToolsA    = ciliumPod{"default", "tools-a", "fd00:1:2::30", "east-2", "", map[string]string{"app": "tools"}, true}
)

func unready(p ciliumPod) ciliumPod { p.ready = false; return p }

// eastState is what east's clustermesh-apiserver publishes for pods: the
// nodes, one identity per label set (numbered in east's range), an ipcache
// entry per pod and one for east-1's node IP with the host identity, and,
// when global, shop/checkout with its ready backends.
func eastState(global bool, pods ...ciliumPod) ciliumState {
	s := ciliumState{identities: map[identity.NumericIdentity]string{}}
	for _, name := range slices.Sorted(maps.Keys(eastNodes)) {
		s.nodes = append(s.nodes, eastNodes[name])
	}
	ids := map[string]identity.NumericIdentity{}
	for _, p := range pods {
		node := eastNodes[p.node]
		ls := ciliumIdentityLabels(p)
		id, ok := ids[ls]
		if !ok {
			id = identity.GetMinimalAllocationIdentity(clusterID) + identity.NumericIdentity(len(ids))
			ids[ls] = id
			s.identities[id] = ls
		}
		s.ips = append(s.ips, identity.IPIdentityPair{
			IP: net.ParseIP(p.ip), HostIP: node.GetNodeIP(false), ID: id,
			K8sNamespace: p.namespace, K8sPodName: p.name, K8sServiceAccount: p.serviceAccount,
			NamedPorts: []identity.NamedPort{{Name: "http", Port: 8080, Protocol: "TCP"}},
		})
	}
	s.ips = append(s.ips, identity.IPIdentityPair{IP: net.ParseIP("192.168.1.1"), HostIP: net.ParseIP("192.168.1.1"), ID: identity.ReservedIdentityHost})
	if global {
		svc := serviceStore.ClusterService{
			Cluster: clusterName, ClusterID: clusterID, Namespace: "shop", Name: "checkout",
			Frontends:       map[string]serviceStore.PortConfiguration{"10.96.0.10": {"http": &loadbalancer.L4Addr{Protocol: loadbalancer.TCP, Port: 80}}},
			Backends:        map[string]serviceStore.PortConfiguration{},
			Labels:          map[string]string{"tier": "front"},
			Selector:        map[string]string{"app": "checkout"},
			IncludeExternal: true, Shared: true,
		}
		for _, p := range pods {
			if p.ready && p.labels["app"] == "checkout" {
				svc.Backends[p.ip] = serviceStore.PortConfiguration{"http": &loadbalancer.L4Addr{Protocol: loadbalancer.TCP, Port: 8080}}
			}
		}
		s.services = append(s.services, svc)
	}
	return s
}

// ciliumIdentityLabels is the label list east's clustermesh-apiserver
// writes for a pod's CiliumIdentity: the labels a Cilium agent gives the
// pod (its own, namespace, namespace labels, service account, cluster),
// filtered as identity-relevant, as CiliumIdentity.SecurityLabels, then
// labels.Map2Labels(..., "").SortedList().
func ciliumIdentityLabels(p ciliumPod) string {
	ns := ciliumNamespace{p.namespace}
	k := key.GetCIDKeyFromLabels(k8sutils.SanitizePodLabels(p.labels, ns, p.serviceAccount, clusterName), labels.LabelSourceK8s)
	security := map[string]string{}
	for _, l := range k.LabelArray {
		security[l.Source+":"+l.Key] = l.Value
	}
	return string(labels.Map2Labels(security, "").SortedList())
}

type ciliumNamespace struct{ name string }

func (n ciliumNamespace) GetName() string              { return n.name }
func (n ciliumNamespace) GetLabels() map[string]string { return eastNamespaceLabels[n.name] }

// identityRecorder is our agent's IdentityObserver.
type identityRecorder struct {
	mu  sync.Mutex
	ids map[string]map[uint32]string // cluster → id → labels
}

func (r *identityRecorder) UpsertIdentity(cluster string, id uint32, ls wire.Labels) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ids[cluster] == nil {
		r.ids[cluster] = map[uint32]string{}
	}
	var parts []string
	for _, l := range ls {
		parts = append(parts, l.String())
	}
	sort.Strings(parts)
	r.ids[cluster][id] = strings.Join(parts, ";") + ";"
}

func (r *identityRecorder) DeleteIdentity(cluster string, id uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.ids[cluster], id)
}

// ourAgent is our agent of cluster west on the in-memory datapath.
type ourAgent struct {
	sync *agentsync.Agent
	dp   *datapath.Memory
	ids  *identityRecorder
	dir  string
}

func startOurAgent(t *testing.T, dir string) *ourAgent {
	t.Helper()
	localState := filepath.Join(dir, "west.yaml")
	writeFile(t, localState, ourState)
	a := &ourAgent{dp: datapath.NewMemory(), ids: &identityRecorder{ids: map[string]map[uint32]string{}}, dir: filepath.Join(dir, "remotes")}
	if err := os.Mkdir(a.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var err error
	a.sync, err = agentsync.New(agentsync.Config{
		ClusterName: ourName, ClusterID: ourID, ConfigDir: a.dir,
		LocalSource: &statesource.File{Path: localState, PollInterval: 10 * time.Millisecond},
		Datapath:    a.dp, Identities: a.ids,
		ConfigPollInterval: 20 * time.Millisecond, BackoffInitial: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.sync.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent Run: %v", err)
		}
		a.dp.Close()
	})
	return a
}

// waitFor waits until cond holds, checked every 20ms (the agent's status
// and datapath have no change notification), or fails t after 60s.
func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: after 60s: %v", what, err)
		}
		<-tick.C
	}
}

// check compares what our agent holds from east with s: its status (ready,
// counts, nothing rejected, endpoint slices reported ignored), its remote
// nodes, the identities it was told of, the ipcache and the global
// service's backends in the datapath.
func (a *ourAgent) check(s ciliumState) error {
	st, ok := a.sync.RemoteStatus(clusterName)
	services, unsupported := len(s.services), "ignored:"
	if s.slicesOnly {
		services, unsupported = 0, "the remote exports its global services only as endpoint slices"
	}
	switch {
	case !ok:
		return fmt.Errorf("no remote %s", clusterName)
	case !st.Connected || !st.Ready:
		return fmt.Errorf("remote %s: connected %v ready %v, last error %q", clusterName, st.Connected, st.Ready, st.LastError)
	case len(st.Rejected) != 0:
		return fmt.Errorf("remote %s rejected %v", clusterName, st.Rejected)
	case st.Nodes != len(s.nodes) || st.Identities != len(s.identities) || st.Endpoints != len(s.ips) || st.Services != services:
		return fmt.Errorf("remote %s: %d nodes, %d identities, %d endpoints, %d services; want %d, %d, %d, %d", clusterName,
			st.Nodes, st.Identities, st.Endpoints, st.Services, len(s.nodes), len(s.identities), len(s.ips), services)
	case len(st.Unsupported) != 1 || st.Unsupported[0].Kind != agentsync.UnsupportedEndpointSlices || !strings.HasPrefix(st.Unsupported[0].Reason, unsupported):
		return fmt.Errorf("remote %s: unsupported %+v, want endpoint slices: %s…", clusterName, st.Unsupported, unsupported)
	}
	if err := a.checkNodes(s); err != nil {
		return err
	}
	if err := a.checkIdentities(s); err != nil {
		return err
	}
	if err := a.checkIPCache(s); err != nil {
		return err
	}
	return a.checkBackends(s)
}

func (a *ourAgent) checkNodes(s ciliumState) error {
	got := map[string]*wire.Node{}
	for _, n := range a.sync.RemoteNodes() {
		got[n.Cluster+"/"+n.Name] = n
	}
	if len(got) != len(s.nodes) {
		return fmt.Errorf("remote nodes %v, want %d", slices.Sorted(maps.Keys(got)), len(s.nodes))
	}
	for _, w := range s.nodes {
		n := got[clusterName+"/"+w.Name]
		if n == nil {
			return fmt.Errorf("node %s missing", w.Name)
		}
		if len(n.IPAddresses) != len(w.IPAddresses) || n.ClusterID != clusterID {
			return fmt.Errorf("node %s: %+v", w.Name, n)
		}
		for i, addr := range w.IPAddresses {
			if n.IPAddresses[i].Type != string(addr.Type) || n.IPAddresses[i].IP.String() != addr.IP.String() {
				return fmt.Errorf("node %s: address %d %v, want %s %s", w.Name, i, n.IPAddresses[i], addr.Type, addr.IP)
			}
		}
		if p := prefixString(n.IPv4AllocCIDR); p != cidrString(w.IPv4AllocCIDR.String()) {
			return fmt.Errorf("node %s: IPv4 CIDR %s, want %s", w.Name, p, w.IPv4AllocCIDR)
		}
		if p := prefixString(n.IPv6AllocCIDR); p != cidrString(w.IPv6AllocCIDR.String()) {
			return fmt.Errorf("node %s: IPv6 CIDR %s, want %s", w.Name, p, w.IPv6AllocCIDR)
		}
	}
	return nil
}

func prefixString(c *wire.CIDR) string {
	if c == nil {
		return ""
	}
	return c.Prefix.String()
}

func (a *ourAgent) checkIdentities(s ciliumState) error {
	a.ids.mu.Lock()
	defer a.ids.mu.Unlock()
	got := a.ids.ids[clusterName]
	if len(got) != len(s.identities) {
		return fmt.Errorf("identities %v, want %d", got, len(s.identities))
	}
	for id, ls := range s.identities {
		if got[uint32(id)] != ls {
			return fmt.Errorf("identity %d: labels %q, want %q", id, got[uint32(id)], ls)
		}
	}
	return nil
}

// checkIPCache: every entry of east in the datapath, with its identity
// (the host identity as remote-node, as Cilium's IPIdentityWatcher maps
// it), its node as tunnel endpoint, east's cluster id.
func (a *ourAgent) checkIPCache(s ciliumState) error {
	all, err := a.dp.IPCache()
	if err != nil {
		return err
	}
	got := map[netip.Prefix]datapath.IPCacheEntry{}
	for p, e := range all {
		if e.ClusterID == clusterID {
			got[p] = e
		}
	}
	if len(got) != len(s.ips) {
		return fmt.Errorf("ipcache of east %v, want %d entries", got, len(s.ips))
	}
	for _, w := range s.ips {
		addr := netip.MustParseAddr(w.IP.String())
		e, ok := got[netip.PrefixFrom(addr, addr.BitLen())]
		wantID := uint32(w.ID)
		if w.ID == identity.ReservedIdentityHost {
			wantID = uint32(identity.ReservedIdentityRemoteNode)
		}
		if !ok || e.Identity != wantID || e.TunnelEndpoint.String() != w.HostIP.String() {
			return fmt.Errorf("ipcache %s: %+v (present %v), want identity %d via %s", addr, e, ok, wantID, w.HostIP)
		}
	}
	return nil
}

// checkBackends: west's global shop/checkout has its own backend and
// east's ready ones.
func (a *ourAgent) checkBackends(s ciliumState) error {
	svcs, err := a.dp.Services()
	if err != nil {
		return err
	}
	want := []string{"10.9.1.10:8080/TCP@7"}
	for _, cs := range s.services {
		if s.slicesOnly {
			break
		}
		for ip := range cs.Backends {
			want = append(want, fmt.Sprintf("%s/TCP@%d", netip.AddrPortFrom(netip.MustParseAddr(ip), 8080), clusterID))
		}
	}
	var got []string
	for _, b := range svcs[datapath.Frontend{Addr: netip.MustParseAddr(ourFE), Port: 80, Protocol: datapath.TCP}] {
		got = append(got, b.String())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("backends of %s:80 %v, want %v", ourFE, got, want)
	}
	return nil
}

// TestOurAgentReadsCiliumApiserver: an etcd populated the way Cilium's
// clustermesh-apiserver populates it, with Cilium's own code (etcdinit's
// users and roles, clustercfg, SyncStores with its prefixes and synced
// canaries, the heartbeat), read by our agent with Cilium's shared remote
// certificate: exactly what Cilium wrote, through an added pod, a removed
// one, one turned unready and a service no longer global; through a
// restart of etcd on its data dir (same etcd cluster id, changes after it
// followed) and a restart on a fresh one (a new etcd cluster id, the
// clustermesh-apiserver's emptyDir: resynced, stale entries removed); and
// drained when its config is removed.
func TestOurAgentReadsCiliumApiserver(t *testing.T) {
	if err := labelsfilter.ParseLabelPrefixCfg(slog.New(slog.DiscardHandler), nil, nil, ""); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := startCiliumCluster(t, dir)
	state := eastState(true, podCheckoutA, podCheckoutB, podCartA, podToolsA)
	c.w.write(t, state)

	a := startOurAgent(t, dir)
	c.pki.etcdConfig(t, filepath.Join(a.dir, clusterName), c.addr, "remote")
	waitFor(t, "the first state", func() error { return a.check(state) })

	state = eastState(true, unready(podCheckoutA), podCheckoutB, podCheckoutC, podCartA)
	c.w.write(t, state)
	waitFor(t, "an added, a removed and an unready pod", func() error { return a.check(state) })
	state = eastState(false, unready(podCheckoutA), podCheckoutB, podCheckoutC, podCartA)
	c.w.write(t, state)
	waitFor(t, "the service no longer global", func() error { return a.check(state) })

	checkPerClusterUser(t, a, c, state)

	// etcd restarted on its data dir: the same store, the writer's client
	// reconnects, our agent follows what changes after.
	c.restartEtcd(t)
	state = eastState(true, podCheckoutA, podCheckoutC, podToolsA)
	c.w.write(t, state)
	waitFor(t, "the state written after etcd restarted", func() error { return a.check(state) })

	// The clustermesh-apiserver's pod restarted: a fresh etcd (emptyDir),
	// init and writers again, with less than before.
	c.restartFresh(t, filepath.Join(dir, "etcd-2"))
	state = eastState(true, podCheckoutB, podCartA)
	c.w.write(t, state)
	waitFor(t, "the state of a fresh etcd, stale entries removed", func() error { return a.check(state) })

	checkConfigChanges(t, a, c, state)

	if err := os.Remove(filepath.Join(a.dir, clusterName)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "east drained", func() error {
		if _, ok := a.sync.RemoteStatus(clusterName); ok {
			return fmt.Errorf("remote %s still known", clusterName)
		}
		if err := a.checkBackends(ciliumState{}); err != nil {
			return err
		}
		all, err := a.dp.IPCache()
		if err != nil {
			return err
		}
		for p, e := range all {
			if e.ClusterID == clusterID {
				return fmt.Errorf("ipcache still has %s of east", p)
			}
		}
		return nil
	})
}

// ciliumCluster is east as a Cilium cluster: its clustermesh-apiserver's
// etcd on addr and the writers in front of it.
type ciliumCluster struct {
	pki       ciliumPKI
	addr      string
	cfg       cmtypes.CiliumClusterConfig
	adminCfg  string
	data      string
	closeEtcd func()
	w         *ciliumWriter
	etcdID    uint64
}

// startCiliumCluster starts east's etcd in dir/etcd-1 (etcdinit run) and
// its writers, with the cluster config of Cilium v1.20's
// clustermesh-apiserver in its default service mode.
func startCiliumCluster(t *testing.T, dir string) *ciliumCluster {
	t.Helper()
	mesh, err := ca.New("interop test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := &ciliumCluster{pki: newCiliumPKI(t, mesh, filepath.Join(dir, "pki"), clusterName), addr: freeAddr(t), data: filepath.Join(dir, "etcd-1")}
	c.cfg = cmtypes.CiliumClusterConfig{ID: clusterID, Capabilities: cmtypes.CiliumClusterConfigCapabilities{
		SyncedCanaries: true, MaxConnectedClusters: 255, ServiceExportsEnabled: new(bool),
		EndpointSlicesExportMode: cmtypes.EndpointSlicesExportModeServicesAndEndpointSlices,
	}}
	c.adminCfg = c.pki.etcdConfig(t, filepath.Join(dir, "admin.yaml"), c.addr, "admin")
	c.closeEtcd = startCiliumEtcd(t, c.pki, c.addr, c.data, clusterName, true)
	c.etcdID = etcdClusterID(t, c.pki, c.addr)
	c.w = startCiliumWriter(t, c.adminCfg, clusterName, c.cfg)
	return c
}

// restartEtcd restarts etcd on its data dir: the same etcd cluster id.
func (c *ciliumCluster) restartEtcd(t *testing.T) {
	t.Helper()
	c.closeEtcd()
	c.closeEtcd = startCiliumEtcd(t, c.pki, c.addr, c.data, clusterName, false)
	if got := etcdClusterID(t, c.pki, c.addr); got != c.etcdID {
		t.Fatalf("etcd cluster id %x after a restart on its data dir, want %x", got, c.etcdID)
	}
}

// restartFresh replaces etcd and writers with new ones on a fresh data
// dir: another etcd cluster id, nothing written yet but the users
// (etcdinit's, and remote-west by the users management).
func (c *ciliumCluster) restartFresh(t *testing.T, data string) {
	t.Helper()
	c.w.close()
	c.closeEtcd()
	c.data = data
	c.closeEtcd = startCiliumEtcd(t, c.pki, c.addr, c.data, clusterName, true)
	if got := etcdClusterID(t, c.pki, c.addr); got == c.etcdID {
		t.Fatalf("a fresh etcd has the old cluster id %x", got)
	}
	c.w = startCiliumWriter(t, c.adminCfg, clusterName, c.cfg)
	c.w.enforceUser(t, "remote-"+ourName)
}

// checkPerClusterUser: our agent's own certificate (remote-west, CN of
// the bundle's remote certificate) is refused until the Cilium cluster's
// users management creates the user, as it does for every cluster of its
// clustermesh.config.clusters; then the agent reads as remote-west.
func checkPerClusterUser(t *testing.T, a *ourAgent, c *ciliumCluster, state ciliumState) {
	t.Helper()
	user := "remote-" + ourName
	c.pki.etcdConfig(t, filepath.Join(a.dir, clusterName), c.addr, user)
	waitFor(t, user+" refused", func() error {
		st, _ := a.sync.RemoteStatus(clusterName)
		if st.Connected || st.LastError == "" {
			return fmt.Errorf("remote %s: connected %v, last error %q", clusterName, st.Connected, st.LastError)
		}
		return nil
	})
	c.w.enforceUser(t, user)
	waitFor(t, "the state read as "+user, func() error { return a.check(state) })
}

// checkConfigChanges: east's cluster config changed under the agent (read
// when it reconnects, here on its changed config file). Another mesh size
// and a KVStoreMesh cache's config are refused whole, saying why; an
// endpointslices-only config (clustermesh-service-v2=only-endpointslice)
// leaves the services in the store unread, east's backends out of west's
// global service, and status says why.
func checkConfigChanges(t *testing.T, a *ourAgent, c *ciliumCluster, state ciliumState) {
	t.Helper()
	remoteCfg := filepath.Join(a.dir, clusterName)
	refused := func(what string, cfg cmtypes.CiliumClusterConfig, want ...string) {
		t.Helper()
		setClusterConfig(t, c.w, cfg)
		touch(t, remoteCfg)
		waitFor(t, what, func() error {
			st, _ := a.sync.RemoteStatus(clusterName)
			for _, w := range want {
				if st.Ready || !strings.Contains(st.LastError, w) {
					return fmt.Errorf("remote %s: ready %v, last error %q, want %q", clusterName, st.Ready, st.LastError, w)
				}
			}
			return nil
		})
	}
	wide := c.cfg
	wide.Capabilities.MaxConnectedClusters = 511
	refused("a 511-cluster config refused", wide, "511", "255")
	cached := c.cfg
	cached.Capabilities.Cached = true
	// A cached config is read from the cache's layout (docs/kvstoremesh.md):
	// this store has no cache, so the agent waits for its canaries.
	refused("a cached config read from the cache's layout", cached, "cilium/synced/"+clusterName+"/cilium/cache/")

	slicesOnly := c.cfg
	slicesOnly.Capabilities.EndpointSlicesExportMode = cmtypes.EndpointSlicesExportModeEndpointSlicesOnly
	setClusterConfig(t, c.w, slicesOnly)
	touch(t, remoteCfg)
	state.slicesOnly = true
	waitFor(t, "an endpointslices-only config", func() error { return a.check(state) })
}

// setClusterConfig writes east's cluster config as its clustermesh-apiserver
// does when it starts with cfg.
func setClusterConfig(t *testing.T, w *ciliumWriter, cfg cmtypes.CiliumClusterConfig) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := clustercfg.Set(ctx, clusterName, cfg, w.client); err != nil {
		t.Fatalf("clustercfg.Set: %v", err)
	}
}

// touch changes a remote's config file without changing what it says, so
// that the agent reconnects.
func touch(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, string(b)+"# changed\n")
}

// freeAddr leases a loopback address until t ends, so that an etcd
// restarted on it is found at the same endpoint (no other test is handed
// it meanwhile).
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := portlock.Reserve()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Release)
	return l.Addr()
}
