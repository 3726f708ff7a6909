package localmesh

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/meshapiserver"
	"github.com/clustermesh/clustermesh/node"
	"github.com/clustermesh/clustermesh/wire"
)

const wait = 20 * time.Second

var names = []string{"east", "west", "north"}

func startMesh(t *testing.T, ebpf bool, agents int) *Mesh {
	t.Helper()
	return startMeshWith(t, Options{EBPF: ebpf, AgentsPerCluster: agents})
}

func startMeshWith(t *testing.T, o Options) *Mesh {
	t.Helper()
	var specs []ClusterSpec
	for i, n := range names {
		specs = append(specs, ClusterSpec{Name: n, ID: uint32(i + 1), State: SampleState(i + 1)})
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	if o.Clusters == nil {
		o.Clusters = specs
	}
	o.Dir, o.ProbeInterval, o.Logger = t.TempDir(), 100*time.Millisecond, log
	m, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return m
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

func remoteStatus(a *Agent, name string) agentsync.RemoteStatus {
	for _, r := range a.Sync.Status().Remotes {
		if r.Name == name {
			return r
		}
	}
	return agentsync.RemoteStatus{}
}

// checkoutBackends returns the clusters of the backends the agent's datapath
// selects for shop/checkout.
func checkoutBackends(t *testing.T, a *Agent) map[uint16]int {
	t.Helper()
	svcs, err := a.Datapath.Services()
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint16]int{}
	for _, b := range svcs[checkoutFrontend] {
		out[b.ClusterID]++
	}
	return out
}

var checkoutFrontend = datapath.Frontend{Addr: CheckoutIP, Port: 80, Protocol: datapath.TCP}

func allReady(m *Mesh) bool {
	for _, c := range m.Clusters {
		for _, a := range c.Agents {
			for _, peer := range m.Clusters {
				if peer == c {
					continue
				}
				r := remoteStatus(a, peer.Name)
				if !r.Ready || r.Nodes != 2 || r.Endpoints != 4 || r.Identities != 2 || r.Services != 1 {
					return false
				}
			}
		}
	}
	return true
}

func testSyncAndFailover(t *testing.T, ebpf bool) {
	m := startMesh(t, ebpf, 1)
	testenv.WaitFor(t, wait, "every agent sees every remote ready with 2 nodes, 4 endpoints, 2 identities, 1 service", func() bool { return allReady(m) })

	east := m.Cluster("east")
	a := east.Agents[0]
	if got := checkoutBackends(t, a); got[1] != 3 || len(got) != 1 {
		t.Fatalf("affinity local with healthy local backends: want 3 east backends only, got %v", got)
	}
	ips, err := a.Datapath.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := ips[netip.MustParsePrefix("10.2.1.100/32")]; !ok || e.ClusterID != 2 || e.TunnelEndpoint != netip.MustParseAddr("192.168.2.1") {
		t.Errorf("west's frontend pod in east's ipcache: %+v (present %v)", e, ok)
	}
	if len(ips) != 8 {
		t.Errorf("east's ipcache holds %d entries, want the 8 remote pods", len(ips))
	}

	// Failover: east's checkout pods become unready.
	st := SampleState(1)
	SetReady(st, "checkout", false)
	if err := east.WriteState(st); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "east selects the 6 remote backends", func() bool {
		got := checkoutBackends(t, a)
		return got[1] == 0 && got[2] == 3 && got[3] == 3
	})
	svc := a.Sync.Status().Services[0]
	if svc.SelectedFrom != "remote" || svc.LocalHealthy != 0 || svc.LocalTotal != 3 || svc.Remote["west"] != 3 || svc.Remote["north"] != 3 {
		t.Errorf("status of the failed-over service: %+v", svc)
	}
	SetReady(st, "checkout", true)
	if err := east.WriteState(st); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "east's own backends preferred again", func() bool {
		got := checkoutBackends(t, a)
		return got[1] == 3 && len(got) == 1
	})

	// Disconnect north from east: east drains north.
	if err := m.Disconnect("east", "north"); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "north drained from east", func() bool {
		ips, _ := a.Datapath.IPCache()
		for _, e := range ips {
			if e.ClusterID == 3 {
				return false
			}
		}
		return len(ips) == 4 && len(a.Sync.Status().Remotes) == 1
	})
}

func TestSyncAndFailoverInMemory(t *testing.T) { testSyncAndFailover(t, false) }

func TestSyncAndFailoverEBPF(t *testing.T) {
	testenv.RequireRoot(t)
	testSyncAndFailover(t, true)
}

// An apiserver that stops leaves its last state in place on the peers; when
// it comes back with an empty etcd, the agents resync without ever missing
// an entry.
func TestAPIServerRestartKeepsState(t *testing.T) {
	m := startMesh(t, false, 1)
	testenv.WaitFor(t, wait, "mesh ready", func() bool { return allReady(m) })
	a, west := m.Cluster("east").Agents[0], m.Cluster("west")
	before, _ := a.Datapath.IPCache()

	if err := west.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "east notices west is gone", func() bool { return !remoteStatus(a, "west").Connected })
	if got := checkoutBackends(t, a); got[1] != 3 {
		t.Fatalf("east lost its service while west is down: %v", got)
	}
	during, _ := a.Datapath.IPCache()
	if len(during) != len(before) {
		t.Fatalf("east pruned on west's failure: %d entries before, %d during", len(before), len(during))
	}
	if err := west.StartAPIServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "east resynced with the restarted west", func() bool {
		r := remoteStatus(a, "west")
		return r.Ready && r.Connected && r.Endpoints == 4
	})
	after, _ := a.Datapath.IPCache()
	for p, e := range before {
		if after[p] != e {
			t.Errorf("%s changed across west's restart: %+v → %+v", p, e, after[p])
		}
	}
}

// Entries a remote publishes that fail validation are rejected, counted and
// never reach the datapath; valid entries keep flowing.
func TestRejectsInvalidRemoteEntries(t *testing.T) {
	m := startMesh(t, false, 1)
	testenv.WaitFor(t, wait, "mesh ready", func() bool { return allReady(m) })
	west := m.Cluster("west")
	admin := adminClient(t, west)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	bad := map[string]string{
		wire.IPCacheKey("10.9.9.1"):             `{"IP":"10.9.9.1","ID":65600}`,                          // east's identity range, not west's
		wire.IPCacheKey("10.9.9.2"):             `{"IP":"10.9.9.2","ID":131100,`,                         // invalid JSON
		wire.IPCacheKey("10.9.9.3"):             `{"IP":"10.9.9.3","HostIP":"fe80::1%eth0","ID":131100}`, // zoned host IP
		wire.NodeKey("west", "evil"):            `{"Name":"evil","Cluster":"east","ClusterID":1}`,        // wrong cluster
		wire.ServiceKey("west", "shop", "evil"): `{"cluster":"west","namespace":"shop","name":"evil","clusterID":7}`,
		wire.IdentityKey(65600):                 `k8s:app=x;k8s:io.cilium.k8s.policy.cluster=west;`,
	}
	for k, v := range bad {
		if _, err := admin.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	// An address in east's own pod CIDR: a remote may not claim it.
	if _, err := admin.Put(ctx, wire.IPCacheKey("10.1.1.50"), `{"IP":"10.1.1.50","ID":131100}`); err != nil {
		t.Fatal(err)
	}
	// An unparseable address.
	if _, err := admin.Put(ctx, wire.IPCacheKey("10.9.9.4"), `{"IP":"10.9.9.400","ID":131100}`); err != nil {
		t.Fatal(err)
	}
	// A valid entry, inside the range of one of west's nodes.
	if _, err := admin.Put(ctx, wire.IPCacheKey("10.2.1.99"), `{"IP":"10.2.1.99","ID":131100}`); err != nil {
		t.Fatal(err)
	}
	a := m.Cluster("east").Agents[0]
	testenv.WaitFor(t, wait, "8 rejections counted and the valid entry applied", func() bool {
		ips, _ := a.Datapath.IPCache()
		_, ok := ips[netip.MustParsePrefix("10.2.1.99/32")]
		return remoteStatus(a, "west").RejectedTotal() == 8 && ok
	})
	r := remoteStatus(a, "west")
	for reason, n := range map[string]uint64{"identity_out_of_range": 2, "malformed_value": 2, "invalid_address": 1, "overlaps_local": 1, "cluster_mismatch": 2} {
		if r.Rejected[reason] != n {
			t.Errorf("rejected[%s] = %d, want %d (all: %v)", reason, r.Rejected[reason], n, r.Rejected)
		}
	}
	ips, _ := a.Datapath.IPCache()
	for _, p := range []string{"10.9.9.1/32", "10.9.9.2/32", "10.9.9.3/32", "10.9.9.4/32", "10.1.1.50/32"} {
		if _, ok := ips[netip.MustParsePrefix(p)]; ok {
			t.Errorf("rejected entry %s reached the datapath", p)
		}
	}
	if r.Nodes != 2 || r.Services != 1 || r.Identities != 2 {
		t.Errorf("rejected entries were counted as state: %+v", r)
	}
}

func adminClient(t *testing.T, c *Cluster) *clientv3.Client {
	t.Helper()
	tlsCfg, err := ca.ClientTLSConfig(c.Bundle.AdminCert(), c.Bundle.AdminKey(), c.Bundle.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + c.Address()}, TLS: tlsCfg, DialTimeout: 2 * time.Second, Logger: zap.NewNop(),
		MaxCallSendMsgSize: 16 << 20}) // hostile values up to what etcd takes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// A fast restart — the store comes back empty, with fewer entries, before
// the probe noticed it was gone — is detected through the store's new etcd
// cluster id, and the resync sweeps what the restarted remote no longer has.
func TestFastRestartSweepsRemovedEntries(t *testing.T) {
	m := startMesh(t, false, 1)
	testenv.WaitFor(t, wait, "mesh ready", func() bool { return allReady(m) })
	a, west := m.Cluster("east").Agents[0], m.Cluster("west")
	st := SampleState(2)
	st.Endpoints = st.Endpoints[:3] // frontend-1 (10.2.1.100) leaves
	if err := west.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	if err := west.WriteState(st); err != nil {
		t.Fatal(err)
	}
	if err := west.StartAPIServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	gone := netip.MustParsePrefix("10.2.1.100/32")
	testenv.WaitFor(t, wait, "10.2.1.100 swept from east after west's fast restart", func() bool {
		ips, _ := a.Datapath.IPCache()
		_, ok := ips[gone]
		r := remoteStatus(a, "west")
		return !ok && r.Ready && r.Endpoints == 3
	})
}

// A remote that comes back with another cluster id is drained, then
// re-admitted under the new id.
func TestRemoteIDChangeDrainsAndReadmits(t *testing.T) {
	m := startMesh(t, false, 1)
	testenv.WaitFor(t, wait, "mesh ready", func() bool { return allReady(m) })
	a, west := m.Cluster("east").Agents[0], m.Cluster("west")
	if err := west.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	west.ID = 7
	if err := os.Remove(filepath.Join(filepath.Dir(west.StateFile), "identities.json")); err != nil {
		t.Fatal(err)
	}
	if err := west.StartAPIServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "west re-admitted as id 7 with its entries under the new id only", func() bool {
		r := remoteStatus(a, "west")
		ips, _ := a.Datapath.IPCache()
		byID := map[uint16]int{}
		for _, e := range ips {
			byID[e.ClusterID]++
		}
		return r.Ready && r.ClusterID == 7 && byID[7] == 4 && byID[2] == 0
	})
}

// A remote whose heartbeat is older than the timeout is reported stale;
// one that keeps writing it is not.
func TestStaleHeartbeat(t *testing.T) {
	m := startMeshWith(t, Options{
		APIServer: func(c *meshapiserver.Config) {
			if c.ClusterName == "west" {
				c.HeartbeatInterval = 50 * time.Millisecond
			}
		},
		Agent: func(c *agentsync.Config) { c.HeartbeatTimeout = 500 * time.Millisecond },
	})
	testenv.WaitFor(t, wait, "mesh ready", func() bool { return allReady(m) })
	a := m.Cluster("east").Agents[0]
	testenv.WaitFor(t, wait, "north (heartbeat every minute) reported stale", func() bool { return remoteStatus(a, "north").Stale })
	if remoteStatus(a, "west").Stale {
		t.Error("west writes its heartbeat every 50ms but is reported stale")
	}
}

// With --remote-state-ttl, a remote unreachable past the TTL loses its
// service backends but keeps its ipcache entries; its return restores them.
func TestRemoteStateTTLRevokesOnlyServices(t *testing.T) {
	m := startMeshWith(t, Options{Agent: func(c *agentsync.Config) { c.RemoteStateTTL = 300 * time.Millisecond }})
	testenv.WaitFor(t, wait, "mesh ready", func() bool { return allReady(m) })
	east, west := m.Cluster("east"), m.Cluster("west")
	a := east.Agents[0]
	st := SampleState(1)
	SetReady(st, "checkout", false) // east selects the remote backends
	if err := east.WriteState(st); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "east selects west's and north's backends", func() bool {
		got := checkoutBackends(t, a)
		return got[2] == 3 && got[3] == 3
	})
	if err := west.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "west's backends revoked after the TTL", func() bool {
		got := checkoutBackends(t, a)
		return got[2] == 0 && got[3] == 3 && remoteStatus(a, "west").ServicesRevoked
	})
	ips, _ := a.Datapath.IPCache()
	n := 0
	for _, e := range ips {
		if e.ClusterID == 2 {
			n++
		}
	}
	if n != 4 {
		t.Errorf("west's ipcache entries: %d, want all 4 kept", n)
	}
	if err := west.StartAPIServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "west's backends restored after it came back", func() bool {
		got := checkoutBackends(t, a)
		return got[2] == 3 && !remoteStatus(a, "west").ServicesRevoked
	})
}

// Two remotes claiming one cluster id: the second is refused with a clear
// error in its status line, and contributes nothing.
func TestClusterIDConflictRefused(t *testing.T) {
	specs := []ClusterSpec{{Name: "east", ID: 1, State: SampleState(1)}, {Name: "north", ID: 3, State: SampleState(3)},
		{Name: "south", ID: 3, State: SampleState(4)}}
	m := startMeshWith(t, Options{Clusters: specs})
	a := m.Cluster("east").Agents[0]
	testenv.WaitFor(t, wait, "one of north and south admitted, the other refused", func() bool {
		n, s := remoteStatus(a, "north"), remoteStatus(a, "south")
		return n.Ready != s.Ready && (n.Failures > 0 || s.Failures > 0)
	})
	refused := remoteStatus(a, "south")
	if remoteStatus(a, "south").Ready {
		refused = remoteStatus(a, "north")
	}
	if !strings.Contains(refused.LastError, "cluster id conflict") || refused.Endpoints != 0 {
		t.Errorf("refused remote: error %q, %d entries", refused.LastError, refused.Endpoints)
	}
	t.Logf("%s: %s", refused.Name, refused.LastError)
}

// OnRemoteNodes receives every remote's nodes, and again when they change
// (what the WireGuard peers are built from).
func TestOnRemoteNodes(t *testing.T) {
	var mu sync.Mutex
	var last []*wire.Node
	m := startMeshWith(t, Options{Agent: func(c *agentsync.Config) {
		if c.ClusterName == "east" {
			c.OnRemoteNodes = func(ns []*wire.Node) { mu.Lock(); last = ns; mu.Unlock() }
		}
	}})
	nodes := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for _, n := range last {
			out = append(out, n.Cluster+"/"+n.Name)
		}
		return out
	}
	testenv.WaitFor(t, wait, "east's agent reported west's and north's 4 nodes", func() bool { return len(nodes()) == 4 })
	if err := m.Disconnect("east", "north"); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "north's nodes gone", func() bool {
		ns := nodes()
		return len(ns) == 2 && strings.HasPrefix(ns[0], "west/") && strings.HasPrefix(ns[1], "west/")
	})
}

// shared: "false" consumes remote backends without exporting the local ones.
func TestSharedFalseConsumesWithoutExporting(t *testing.T) {
	specs := []ClusterSpec{{Name: "east", ID: 1, State: SampleState(1)}, {Name: "west", ID: 2, State: SampleState(2)}}
	specs[0].State.Services[0].Annotations[wire.AnnotationShared] = "false"
	SetReady(specs[0].State, "checkout", false) // east relies on west's backends
	m := startMeshWith(t, Options{Clusters: specs})
	east, west := m.Cluster("east").Agents[0], m.Cluster("west").Agents[0]
	testenv.WaitFor(t, wait, "both synced", func() bool {
		return remoteStatus(east, "west").Ready && remoteStatus(west, "east").Ready
	})
	if got := checkoutBackends(t, east); got[2] != 3 {
		t.Errorf("east (shared=false) should consume west's 3 backends: %v", got)
	}
	if n := remoteStatus(west, "east").Services; n != 0 {
		t.Errorf("east exported %d services despite shared=false", n)
	}
	for _, s := range west.Sync.Status().Services {
		if s.Remote["east"] != 0 {
			t.Errorf("west sees east's backends: %+v", s)
		}
	}
}

// An agent that ends while it is meant to run (here its metrics address
// is taken) is named by Mesh.Failure with its error, so that a wait on
// the mesh gives up at once instead of at its deadline; the others run
// on, and StopAgent returns the error.
func TestFailureNamesAnAgentThatEnded(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	m := startMeshWith(t, Options{Node: func(name string, cfg *node.Config) bool {
		if name == "west-node-1" {
			cfg.MetricsAddr = taken.Addr().String()
		}
		return true
	}})
	var failure error
	testenv.WaitFor(t, wait, "the mesh reports west-node-1's end", func() bool {
		failure = m.Failure()
		return failure != nil
	})
	if !strings.Contains(failure.Error(), "west-node-1") || !errors.Is(failure, syscall.EADDRINUSE) {
		t.Errorf("Failure: %v, want west-node-1 and its address in use", failure)
	}
	for _, c := range m.Clusters {
		if c.Name != "west" && c.Agents[0].Ended() != nil {
			t.Errorf("%s: %v", c.Agents[0].Name, c.Agents[0].Ended())
		}
	}
	if err := m.Cluster("west").StopAgent(0); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("StopAgent: %v, want the agent's error", err)
	}
	if err := m.Failure(); err != nil {
		t.Errorf("Failure after StopAgent: %v, want nil", err)
	}
}
