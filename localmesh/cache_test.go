package localmesh

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/meshapiserver"
	"github.com/clustermesh/clustermesh/wire"
)

// removalWatch is an agent's in-memory datapath that sees every write as
// it happens: anything that leaves it (an ipcache entry deleted, a service
// deleted or shrunk) is counted, and the first write of each prefix is
// timed.
type removalWatch struct {
	*datapath.Memory
	mu      sync.Mutex
	removed []string                   // guarded by mu
	svcLen  map[datapath.Frontend]int  // guarded by mu
	seen    map[netip.Prefix]time.Time // guarded by mu
	hits    chan netip.Prefix
}

func newRemovalWatch() *removalWatch {
	return &removalWatch{Memory: datapath.NewMemory(), svcLen: map[datapath.Frontend]int{}, seen: map[netip.Prefix]time.Time{},
		hits: make(chan netip.Prefix, 1024)}
}

func (w *removalWatch) saw(ps ...netip.Prefix) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range ps {
		if _, ok := w.seen[p]; !ok {
			w.seen[p] = now
			select {
			case w.hits <- p:
			default:
			}
		}
	}
}

func (w *removalWatch) remove(what string) {
	w.mu.Lock()
	w.removed = append(w.removed, what)
	w.mu.Unlock()
}

func (w *removalWatch) UpsertIPCache(p netip.Prefix, e datapath.IPCacheEntry) error {
	w.saw(p)
	return w.Memory.UpsertIPCache(p, e)
}

func (w *removalWatch) UpsertIPCacheBatch(ps []netip.Prefix, es []datapath.IPCacheEntry) error {
	w.saw(ps...)
	return w.Memory.UpsertIPCacheBatch(ps, es)
}

func (w *removalWatch) DeleteIPCache(p netip.Prefix) error {
	w.remove("ipcache " + p.String())
	return w.Memory.DeleteIPCache(p)
}

func (w *removalWatch) UpsertService(f datapath.Frontend, bs []datapath.Backend) error {
	w.mu.Lock()
	prev, known := w.svcLen[f]
	w.svcLen[f] = len(bs)
	w.mu.Unlock()
	if known && len(bs) < prev {
		w.remove(fmt.Sprintf("service %v: %d → %d backends", f, prev, len(bs)))
	}
	return w.Memory.UpsertService(f, bs)
}

func (w *removalWatch) DeleteService(f datapath.Frontend) error {
	w.remove(fmt.Sprintf("service %v", f))
	return w.Memory.DeleteService(f)
}

func (w *removalWatch) removals() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.removed...)
}

// watchAgents makes the in-memory datapath of agent east-node-1 a
// removalWatch (through Options.Agent).
func watchAgents(o *Options, w *removalWatch) {
	prev := o.Agent
	o.Agent = func(c *agentsync.Config) {
		if prev != nil {
			prev(c)
		}
		if c.Datapath != nil && c.ClusterName == "east" {
			c.Datapath = w
		}
	}
}

// datapathOf dumps what an agent's datapath holds.
func datapathOf(t *testing.T, dp datapath.Reader) (map[netip.Prefix]datapath.IPCacheEntry, map[datapath.Frontend][]datapath.Backend) {
	t.Helper()
	ips, err := dp.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	svcs, err := dp.Services()
	if err != nil {
		t.Fatal(err)
	}
	return ips, svcs
}

// Three clusters, each with a cache: every agent reads every peer from its
// own cluster's apiserver, and holds exactly what agents reading the peers
// directly hold; changes, readiness and a disconnect flow through both
// hops.
func TestCacheMeshSameAsDirect(t *testing.T) {
	direct := startMesh(t, false, 1)
	cached := startMeshWith(t, Options{Cache: true})
	testenv.WaitFor(t, wait, "the direct mesh ready", func() bool { return allReady(direct) })
	testenv.WaitFor(t, wait, "every agent of the cached mesh sees every remote ready with 2 nodes, 4 endpoints, 2 identities, 1 service", func() bool { return allReady(cached) })

	for _, name := range names {
		dIPs, dSvcs := datapathOf(t, direct.Cluster(name).Agents[0].Datapath)
		cIPs, cSvcs := datapathOf(t, cached.Cluster(name).Agents[0].Datapath)
		if !reflect.DeepEqual(dIPs, cIPs) {
			t.Errorf("%s: ipcache through the cache %v, directly %v", name, cIPs, dIPs)
		}
		if !reflect.DeepEqual(dSvcs, cSvcs) {
			t.Errorf("%s: services through the cache %v, directly %v", name, cSvcs, dSvcs)
		}
	}
	east, west := cached.Cluster("east"), cached.Cluster("west")
	a := east.Agents[0]
	r := remoteStatus(a, "west")
	if r.ViaCache == nil || !r.ViaCache.Connected || !r.ViaCache.Ready || r.ViaCache.CacheDown || !r.Connected {
		t.Errorf("west's status through east's cache: %+v (via cache %+v)", r, r.ViaCache)
	}
	if want := []string{"https://" + east.Address()}; !reflect.DeepEqual(r.EtcdEndpoints, want) {
		t.Errorf("east's agent reads west at %v, want its own apiserver %v", r.EtcdEndpoints, want)
	}

	// What east's cache holds of north is for east's agents only: west,
	// a peer of east, may not read it (nor the configs and canaries the
	// cache writes).
	peer := clientAs(t, east, west.Bundle.RemoteCert(), west.Bundle.RemoteKey())
	own := clientAs(t, east, east.Bundle.RemoteCert(), east.Bundle.RemoteKey())
	for _, key := range []string{"cilium/cache/", wire.ClusterConfigKey("north"), "cilium/synced/north/"} {
		if resp, err := peer.Get(context.Background(), key, clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("west, a peer, reading %s from east's store: %v (%v), want permission denied", key, resp, err)
		}
		if resp, err := own.Get(context.Background(), key, clientv3.WithPrefix()); err != nil || len(resp.Kvs) == 0 {
			t.Errorf("east's agents reading %s from east's store: %v (%v)", key, resp, err)
		}
	}

	// Two hops: west's checkout pods become unready (their backends leave
	// the selection), a pod leaves and a new one comes.
	st := SampleState(2)
	SetReady(st, "checkout", false)
	st.Endpoints = st.Endpoints[:len(st.Endpoints)-1] // frontend-1 (10.2.1.100) leaves
	probe := netip.MustParseAddr("10.2.2.77")
	nine := *st.Endpoints[0]
	nine.Pod, nine.IP = "checkout-9", probe
	st.Endpoints = append(st.Endpoints, &nine)
	for _, m := range []*Mesh{direct, cached} {
		if err := m.Cluster("west").WriteState(st); err != nil {
			t.Fatal(err)
		}
	}
	same := func() (bool, string) {
		for _, name := range names {
			dIPs, dSvcs := datapathOf(t, direct.Cluster(name).Agents[0].Datapath)
			cIPs, cSvcs := datapathOf(t, cached.Cluster(name).Agents[0].Datapath)
			if !reflect.DeepEqual(dIPs, cIPs) || !reflect.DeepEqual(dSvcs, cSvcs) {
				return false, name
			}
		}
		return true, ""
	}
	testenv.WaitFor(t, wait, "west's change (readiness, a pod gone, a pod new) in east's datapath through the cache, as directly", func() bool {
		ips, _ := datapathOf(t, a.Datapath)
		_, gone := ips[netip.MustParsePrefix("10.2.1.100/32")]
		_, added := ips[netip.PrefixFrom(probe, 32)]
		ok, _ := same()
		return !gone && added && ok
	})

	// A disconnect drains the agents and the cache.
	if err := cached.Disconnect("east", "west"); err != nil {
		t.Fatal(err)
	}
	admin := adminClient(t, east)
	testenv.WaitFor(t, wait, "west drained from east's agent and east's cache", func() bool {
		ips, _ := datapathOf(t, a.Datapath)
		for _, e := range ips {
			if uint32(e.ClusterID) == west.ID {
				return false
			}
		}
		resp, err := admin.Get(context.Background(), "cilium/cache/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return false
		}
		left := 0
		for _, c := range []string{"west"} {
			r, err := admin.Get(context.Background(), wire.ClusterConfigKey(c))
			if err != nil || len(r.Kvs) != 0 {
				left++
			}
		}
		// What is left under cilium/cache/ is north's.
		n, err := admin.Get(context.Background(), "cilium/cache/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return false
		}
		for _, kv := range n.Kvs {
			if strings.Contains(string(kv.Key), "/west/") || strings.HasSuffix(string(kv.Key), "/west") {
				left++
			}
		}
		return left == 0 && resp.Count > 0
	})
}

// A remote's apiserver dies: the agents reading it through the cache keep
// what they hold, and their status says the remote is disconnected from the
// cache (not the cache down) and, past the heartbeat timeout, stale. Then
// the cache stops: the agents keep everything and say the cache is down.
func TestCacheRemoteDownKeepsStateAndSaysStale(t *testing.T) {
	m := startMeshWith(t, Options{Cache: true,
		APIServer: func(c *meshapiserver.Config) { c.HeartbeatInterval = 50 * time.Millisecond },
		Agent:     func(c *agentsync.Config) { c.HeartbeatTimeout = time.Second },
	})
	testenv.WaitFor(t, wait, "mesh ready", func() bool { return allReady(m) })
	a := m.Cluster("east").Agents[0]
	before, _ := datapathOf(t, a.Datapath)
	if err := m.Cluster("west").StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "west reported disconnected from the cache and stale by east's agent", func() bool {
		r := remoteStatus(a, "west")
		return r.Stale && r.ViaCache != nil && !r.ViaCache.Connected && !r.ViaCache.CacheDown && !r.Connected && !r.Ready
	})
	after, _ := datapathOf(t, a.Datapath)
	if !reflect.DeepEqual(before, after) {
		t.Errorf("east's ipcache changed while west is down: before %v, after %v", before, after)
	}
	if r := remoteStatus(a, "north"); r.Stale || !r.Ready {
		t.Errorf("north, up, reported stale or not ready: %+v", r)
	}

	// The cache itself stops: its status of north is no longer rewritten,
	// and the agent says the cache is down (north itself is up).
	m.Cluster("east").StopCache()
	testenv.WaitFor(t, 4*agentsync.CacheStatusInterval, "east's agent reports its cache down for north", func() bool {
		r := remoteStatus(a, "north")
		return r.ViaCache != nil && r.ViaCache.CacheDown && !r.Connected
	})
	if after, _ := datapathOf(t, a.Datapath); !reflect.DeepEqual(before, after) {
		t.Errorf("east's ipcache changed while its cache is down")
	}
}

// bigCachedMesh is a mesh of clusters east (the sample state) and n-1
// clusters of entries pods each, read through a cache per cluster; east's
// agent writes into w.
func bigCachedMesh(t *testing.T, n, entries int, w *removalWatch, tweak func(*Options)) *Mesh {
	t.Helper()
	specs := []ClusterSpec{{Name: "east", ID: 1, State: SampleState(1)}}
	for i := 2; i <= n; i++ {
		specs = append(specs, ClusterSpec{Name: fmt.Sprintf("c%d", i), ID: uint32(i), State: bigState(i, entries, entries/10, entries/40, 10)})
	}
	// Probes get 5s: every cluster's apiserver, cache and agent share this
	// machine, and a 1s probe timeout ends sessions mid-list under the load
	// of the initial syncs.
	o := Options{Cache: true, Clusters: specs, Agent: func(c *agentsync.Config) { c.ProbeTimeout = 5 * time.Second }}
	watchAgents(&o, w)
	if tweak != nil {
		tweak(&o)
	}
	m := startMeshWith(t, o)
	a := m.Cluster("east").Agents[0]
	start := time.Now()
	testenv.WaitFor(t, 5*time.Minute, fmt.Sprintf("east's agent holds every remote's %d pods", entries), func() bool {
		for _, c := range m.Clusters[1:] {
			if r := remoteStatus(a, c.Name); !r.Ready || r.Endpoints != entries {
				return false
			}
		}
		return true
	})
	t.Logf("%d clusters of %d pods: east's agent (and cache) synced %d remote pods in %s", n, entries, (n-1)*entries, time.Since(start))
	return m
}

// restartCache restarts east's cache and returns how long it took to have
// every remote listed again and everything written.
func restartCache(t *testing.T, m *Mesh) time.Duration {
	t.Helper()
	east := m.Cluster("east")
	east.StopCache()
	start := time.Now()
	if err := east.StartCache(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 2*time.Minute, "east's cache resynced every remote", func() bool {
		st := east.Cache().Status()
		for _, r := range st.Remotes {
			if !r.Ready {
				return false
			}
		}
		return len(st.Remotes) == len(m.Clusters)-1 && st.Writes.PreviousLeft == 0 && st.Writes.Pending == 0 && st.Writes.Transactions > 0
	})
	return time.Since(start)
}

// A cache restart is no blackout: at no moment does an entry leave the
// agent's datapath (every write is watched), and once the cache has
// resynced the agent holds exactly what it held before.
func TestCacheRestartRemovesNothing(t *testing.T) {
	w := newRemovalWatch()
	m := bigCachedMesh(t, 3, 500, w, nil)
	a := m.Cluster("east").Agents[0]
	before, beforeSvcs := datapathOf(t, a.Datapath)
	if r := w.removals(); len(r) > 0 {
		t.Fatalf("removals before the restart: %v", r)
	}
	took := restartCache(t, m)
	for range 2 { // and again, right away
		took = restartCache(t, m)
	}
	if r := w.removals(); len(r) > 0 {
		t.Errorf("%d removals from the agent's datapath during cache restarts, first %v", len(r), r[0])
	}
	after, afterSvcs := datapathOf(t, a.Datapath)
	if !reflect.DeepEqual(before, after) || !reflect.DeepEqual(beforeSvcs, afterSvcs) {
		t.Errorf("the agent's datapath differs after the cache restarts (%d → %d ipcache entries)", len(before), len(after))
	}
	t.Logf("cache resync of 2 remotes × 500 pods: %s", took)
}

// What a remote publishes that fails validation is rejected by the cache
// (counted in its status) and never reaches the cluster's etcd nor any
// agent; valid entries keep flowing.
func TestCacheRejectsMalformedEntries(t *testing.T) {
	m := startMeshWith(t, Options{Cache: true})
	testenv.WaitFor(t, wait, "mesh ready", func() bool { return allReady(m) })
	east, west := m.Cluster("east"), m.Cluster("west")
	admin := adminClient(t, west)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	bad := map[string]string{
		wire.IPCacheKey("10.2.1.91"):            `{"IP":"10.2.1.91","ID":65600}`,                          // east's identity range, not west's
		wire.IPCacheKey("10.2.1.92"):            `{"IP":"10.2.1.92","ID":131100,`,                         // invalid JSON
		wire.IPCacheKey("10.2.1.93"):            `{"IP":"10.2.1.93","HostIP":"fe80::1%eth0","ID":131100}`, // zoned host IP
		wire.NodeKey("west", "evil"):            `{"Name":"evil","Cluster":"east","ClusterID":1}`,         // wrong cluster
		wire.ServiceKey("west", "shop", "evil"): `{"cluster":"west","namespace":"shop","name":"evil","clusterID":7}`,
		wire.IdentityKey(65600):                 `k8s:app=x;k8s:io.cilium.k8s.policy.cluster=west;`,
		wire.IPCacheKey("10.2.1.94"):            `{"IP":"10.2.1.400","ID":131100}`, // unparseable
	}
	for k, v := range bad {
		if _, err := admin.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.Put(ctx, wire.IPCacheKey("10.2.1.99"), `{"IP":"10.2.1.99","ID":131100}`); err != nil {
		t.Fatal(err)
	}
	a := east.Agents[0]
	testenv.WaitFor(t, wait, "7 rejections counted by east's cache and the valid entry in east's agent", func() bool {
		ips, _ := datapathOf(t, a.Datapath)
		_, ok := ips[netip.MustParsePrefix("10.2.1.99/32")]
		return cacheRemote(east, "west").RejectedTotal() == 7 && ok
	})
	if r := remoteStatus(a, "west"); r.RejectedTotal() != 0 || r.Nodes != 2 || r.Services != 1 || r.Identities != 2 || r.Endpoints != 5 {
		t.Errorf("east's agent saw what the cache rejected: %+v", r)
	}
	ips, _ := datapathOf(t, a.Datapath)
	for _, p := range []string{"10.2.1.91/32", "10.2.1.92/32", "10.2.1.93/32", "10.2.1.94/32"} {
		if _, ok := ips[netip.MustParsePrefix(p)]; ok {
			t.Errorf("rejected entry %s reached the agent's datapath", p)
		}
	}
	keys, err := adminClient(t, east).Get(ctx, "cilium/cache/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range keys.Kvs {
		k := string(kv.Key)
		if strings.Contains(k, "evil") || strings.Contains(k, "65600") || strings.Contains(k, "10.2.1.9") && !strings.HasSuffix(k, "10.2.1.99") {
			t.Errorf("rejected entry %s written into east's cache", k)
		}
	}
}

// cacheRemote is c's cache's status of remote name.
func cacheRemote(c *Cluster, name string) agentsync.RemoteStatus {
	for _, r := range c.Cache().Status().Remotes {
		if r.Name == name {
			return r
		}
	}
	return agentsync.RemoteStatus{}
}

// clientAs is a client of c's apiserver with the given certificate.
func clientAs(t *testing.T, c *Cluster, cert, key string) *clientv3.Client {
	t.Helper()
	tlsCfg, err := ca.ClientTLSConfig(cert, key, c.Bundle.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + c.Address()}, TLS: tlsCfg, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// The cluster's own apiserver restarts (its store comes back empty, the
// cache's lease gone): the cache runs again and writes every remote anew,
// and the agents, resyncing from the new store, lose nothing on the way.
func TestCacheOwnAPIServerRestart(t *testing.T) {
	w := newRemovalWatch()
	o := Options{Cache: true}
	watchAgents(&o, w)
	m := startMeshWith(t, o)
	testenv.WaitFor(t, wait, "mesh ready", func() bool { return allReady(m) })
	east := m.Cluster("east")
	a := east.Agents[0]
	before, beforeSvcs := datapathOf(t, a.Datapath)
	if err := east.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	if err := east.StartAPIServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "east's agent ready again for west and north, through the new store", func() bool {
		for _, name := range []string{"west", "north"} {
			r := remoteStatus(a, name)
			if !r.Ready || r.Lists["ipcache"] < 2 || r.Endpoints != 4 {
				return false
			}
		}
		return true
	})
	if r := w.removals(); len(r) > 0 {
		t.Errorf("%d removals from east's agent while its apiserver restarted, first %v", len(r), r[0])
	}
	after, afterSvcs := datapathOf(t, a.Datapath)
	if !reflect.DeepEqual(before, after) || !reflect.DeepEqual(beforeSvcs, afterSvcs) {
		t.Errorf("east's datapath differs after its apiserver restarted")
	}
}

// A remote's apiserver restarts with the same state: the cache relists it
// and rewrites nothing but its config, canaries and status (a reconnection
// storm does not become a write storm on the cluster's etcd, nor a watch
// storm on its agents).
func TestCacheRelistRewritesNothingUnchanged(t *testing.T) {
	w := newRemovalWatch()
	m := bigCachedMesh(t, 3, 500, w, nil)
	east, c2 := m.Cluster("east"), m.Cluster("c2")
	lists := func() uint64 { return cacheRemote(east, "c2").Lists["ipcache"] }
	before, listsBefore := east.Cache().Status().Writes.Ops, lists()
	if err := c2.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	if err := c2.StartAPIServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "east's cache relisted c2", func() bool {
		r := cacheRemote(east, "c2")
		return r.Ready && lists() > listsBefore
	})
	if ops := east.Cache().Status().Writes.Ops - before; ops > 50 {
		t.Errorf("the cache wrote %d operations after relisting an unchanged remote of %d entries", ops, 500+50+50+12)
	}
	if r := w.removals(); len(r) > 0 {
		t.Errorf("%d removals from east's agent, first %v", len(r), r[0])
	}
}
