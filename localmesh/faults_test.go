package localmesh

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/portlock"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/meshapiserver"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// freeAddr leases a loopback address until t ends: an apiserver stopped
// and started again on it finds it free.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := portlock.Reserve()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Release)
	return l.Addr()
}

// ipcacheEquals reports whether the datapath holds exactly want's endpoints
// of cluster id (and says what differs).
func ipcacheEquals(dp datapath.Reader, id uint16, want map[netip.Prefix]bool) (bool, string) {
	ips, err := dp.IPCache()
	if err != nil {
		return false, err.Error()
	}
	have, extra := 0, 0
	for p, e := range ips {
		if e.ClusterID != id {
			continue
		}
		if want[p] {
			have++
		} else {
			extra++
		}
	}
	return have == len(want) && extra == 0, ""
}

// Test 1: the remote apiserver (a separate process) is SIGKILLed in the middle
// of the agent's initial list of 50k entries, then restarted with a changed
// state. The agent ends with exactly the new state, and never deleted an
// entry that existed both before the fault and after it.
func TestHeavyKillDuringInitialListLosesNothing(t *testing.T) {
	testenv.Heavy(t)
	e := newFaultEnv(t)
	st := bigState(2, 50000, 20, 0, 0)
	stateFile := filepath.Join(e.dir, "west.json")
	writeJSON(t, stateFile, st)
	spec := processSpec{Cluster: "west", ID: 2, Listen: freeAddr(t), CertDir: e.west.Dir, Peers: []string{"east"}, StateFile: stateFile}
	p := startAPIServerProcess(t, spec)
	e.pointAt(t, spec.Listen)

	rec := newRecorder()
	rec.blockAt = 5 // after 5 pages of 2,000: 10,000 of 50,000 entries applied
	a := e.startAgent(t, rec, func(c *agentsync.Config) { c.ListPageSize = 2000 })
	select {
	case <-rec.blocked:
	case <-time.After(60 * time.Second):
		t.Fatal("the agent never got 5 pages into its list")
	}
	before, err := rec.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	if len(before) == 0 || len(before) >= len(st.Endpoints) {
		t.Fatalf("the fault must strike mid-list: %d of %d entries applied", len(before), len(st.Endpoints))
	}
	p.kill()
	close(rec.release)

	// West comes back (an empty store) without 500 of its pods, among them
	// some the agent had applied, and with 500 new ones.
	after := bigState(2, 50500, 20, 0, 0)
	after.Endpoints = after.Endpoints[500:]
	writeJSON(t, stateFile, after)
	startAPIServerProcess(t, spec)
	want := prefixesOf(after)
	testenv.WaitFor(t, 2*time.Minute, "the agent holds exactly west's new 50,000 entries", func() bool {
		ok, _ := ipcacheEquals(rec, 2, want)
		return ok && westOf(a).Ready
	})
	deleted := rec.deleted()
	for p := range before {
		if want[p] && deleted[p] > 0 {
			t.Errorf("%s existed before and after the fault but was deleted %d times in between", p, deleted[p])
		}
	}
	gone := 0
	for p := range deleted {
		if !want[p] {
			gone++
		}
	}
	t.Logf("applied %d entries before the kill; %d deletes, all of entries gone from the source", len(before), gone)
}

// inProcessWest runs west's apiserver in this process on addr with source.
func inProcessWest(t testing.TB, e *faultEnv, addr string, src statesource.Source) (stop func()) {
	t.Helper()
	_, stop = startInProcessWest(t, e, addr, src)
	return stop
}

// inProcessWestServer is inProcessWest for callers that read its status.
func inProcessWestServer(t testing.TB, e *faultEnv, addr string, src statesource.Source) *meshapiserver.Server {
	t.Helper()
	srv, _ := startInProcessWest(t, e, addr, src)
	return srv
}

func startInProcessWest(t testing.TB, e *faultEnv, addr string, src statesource.Source) (*meshapiserver.Server, func()) {
	t.Helper()
	return startInProcessWestWith(t, e, addr, src, nil)
}

// startInProcessWestWith is startInProcessWest with an identity store.
func startInProcessWestWith(t testing.TB, e *faultEnv, addr string, src statesource.Source, ids meshapiserver.IdentityStore) (*meshapiserver.Server, func()) {
	t.Helper()
	srv, err := meshapiserver.New(meshapiserver.Config{ClusterName: "west", ClusterID: 2, ListenAddress: addr,
		ServerCertFile: e.west.ServerCert(), ServerKeyFile: e.west.ServerKey(), CAFile: e.west.CAFile(),
		AdminCertFile: e.west.AdminCert(), AdminKeyFile: e.west.AdminKey(), Peers: []string{"east"}, Source: src,
		IdentityStore: ids, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	testenv.WaitFor(t, 30*time.Second, "west's etcd serving", func() bool { return srv.ClientURL() != "" })
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("west: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	return srv, stop
}

// gatedStore holds the apiserver's first publish until opened: it saves
// the identities the first snapshot allocates before writing it, and its
// Save waits. (The apiserver reads its state before etcd serves, so a slow
// source would keep etcd from serving at all.)
type gatedStore struct{ open chan struct{} }

func (g *gatedStore) Load(context.Context, wire.Cluster) (map[string]uint32, error) {
	return map[string]uint32{}, nil
}

func (g *gatedStore) Save(ctx context.Context, _ wire.Cluster, _ map[string]uint32) error {
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Test 3: west restarts with an empty store and a slow first publish (no
// canary yet). The agent connects to the new store but deletes nothing until the
// canary appears; then it sweeps exactly what is gone.
func TestEmptyRestartedRemoteDeletesNothingBeforeCanary(t *testing.T) {
	e := newFaultEnv(t)
	addr := freeAddr(t)
	writeJSON(t, filepath.Join(e.dir, "west.json"), SampleState(2))
	stop := inProcessWest(t, e, addr, &statesource.File{Path: filepath.Join(e.dir, "west.json")})
	e.pointAt(t, addr)
	rec := newRecorder()
	a := e.startAgent(t, rec, nil)
	testenv.WaitFor(t, wait, "west synced", func() bool { return westOf(a).Ready })
	firstEtcd := westOf(a).EtcdClusterID
	stop()

	next := SampleState(2)
	next.Endpoints = next.Endpoints[1:] // checkout-1 leaves
	writeJSON(t, filepath.Join(e.dir, "west.json"), next)
	gate := &gatedStore{open: make(chan struct{})}
	startInProcessWestWith(t, e, addr, &statesource.File{Path: filepath.Join(e.dir, "west.json")}, gate)
	testenv.WaitFor(t, wait, "the agent connected to the new, empty store", func() bool {
		r := westOf(a)
		return r.Connected && r.EtcdClusterID != firstEtcd
	})
	if r := westOf(a); r.Ready {
		t.Fatalf("west ready before its canary: %+v", r)
	}
	if d := rec.deleted(); len(d) != 0 {
		t.Fatalf("deleted %v before the canary", d)
	}
	if ok, _ := ipcacheEquals(rec, 2, prefixesOf(SampleState(2))); !ok {
		t.Fatal("west's entries changed before the canary")
	}
	close(gate.open)
	testenv.WaitFor(t, wait, "resynced once the canary appeared", func() bool {
		ok, _ := ipcacheEquals(rec, 2, prefixesOf(next))
		return ok && westOf(a).Ready
	})
	if d := rec.deleted(); len(d) != 1 {
		t.Errorf("deletes: %v, want only the endpoint that left", d)
	}
}

func westAdmin(t testing.TB, e *faultEnv, addr string) *clientv3.Client {
	t.Helper()
	tlsCfg, err := ca.ClientTLSConfig(e.west.AdminCert(), e.west.AdminKey(), e.west.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"https://" + addr}, TLS: tlsCfg, DialTimeout: 2 * time.Second,
		Logger: zap.NewNop(), MaxCallSendMsgSize: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Tests 2 and 4: while the agent is cut off, west deletes and adds entries
// and compacts its store past the agent's watch revision. Whether the
// session survives the cut (the watch then hits the compaction and relists)
// or ends (the next session lists), the agent ends with exactly west's state.
func TestChangesAndCompactionWhileDisconnected(t *testing.T) {
	for _, tc := range []struct {
		name     string
		survives bool
		// probeTimeout: for the surviving session, longer than the test can
		// run, so that no slowness of the machine ends it; for the other,
		// short, so that the cut ends it.
		probeTimeout time.Duration
	}{
		{"session survives: compacted watch relists", true, 10 * time.Minute},
		{"session ends: reconnect resyncs", false, 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newFaultEnv(t)
			addr := freeAddr(t)
			stateFile := filepath.Join(e.dir, "west.json")
			writeJSON(t, stateFile, SampleState(2))
			inProcessWest(t, e, addr, &statesource.File{Path: stateFile})
			px := newProxy(t, addr)
			e.pointAt(t, px.addr())
			rec := newRecorder()
			a := e.startAgent(t, rec, func(c *agentsync.Config) { c.ProbeTimeout = tc.probeTimeout })
			testenv.WaitFor(t, wait, "west synced", func() bool { return westOf(a).Ready })
			failuresBefore := westOf(a).Failures

			px.pause()
			next := SampleState(2)
			next.Endpoints = append(next.Endpoints[2:], &statesource.Endpoint{Namespace: "shop", Pod: "new-1",
				IP: netip.MustParseAddr("10.2.2.99"), Node: "node-2", Labels: map[string]string{"app": "new"}})
			writeJSON(t, stateFile, next)
			admin := westAdmin(t, e, addr)
			testenv.WaitFor(t, wait, "west published the change", func() bool {
				resp, err := admin.Get(context.Background(), "cilium/state/ip/v1/default/10.2.2.99")
				return err == nil && len(resp.Kvs) == 1
			})
			// More writes after the change, then compact past all of it: the
			// agent's watch revision is gone.
			var resp *clientv3.PutResponse
			for i := 0; i < 3; i++ {
				var err error
				if resp, err = admin.Put(context.Background(), "cilium/other", "x"); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := admin.Compact(context.Background(), resp.Header.Revision); err != nil {
				t.Fatal(err)
			}
			if !tc.survives {
				testenv.WaitFor(t, wait, "the agent noticed the cut", func() bool { return !westOf(a).Connected })
			}
			px.resume()
			// The client's reconnection backoff grew during the cut: a
			// generous deadline.
			testenv.WaitFor(t, 2*time.Minute, "exactly west's new state", func() bool {
				ok, _ := ipcacheEquals(rec, 2, prefixesOf(next))
				return ok && westOf(a).Ready
			})
			r := westOf(a)
			if tc.survives && (r.Failures != failuresBefore || r.Lists["ipcache"] < 2) {
				t.Errorf("want the same session to relist after the compaction: failures %d→%d, ipcache lists %d",
					failuresBefore, r.Failures, r.Lists["ipcache"])
			}
		})
	}
}

// Test 5: a load balancer in front of two west replicas, each with its own
// etcd and its own (here: different) state, moves the agent from one to the
// other. The agent notices through the etcd cluster id and resyncs.
func TestReplicaSwapDetectedThroughClusterID(t *testing.T) {
	e := newFaultEnv(t)
	addrA, addrB := freeAddr(t), freeAddr(t)
	stA, stB := SampleState(2), SampleState(2)
	stB.Endpoints = append(stB.Endpoints[1:], &statesource.Endpoint{Namespace: "shop", Pod: "only-b",
		IP: netip.MustParseAddr("10.2.2.77"), Node: "node-2", Labels: map[string]string{"app": "b"}})
	writeJSON(t, filepath.Join(e.dir, "a.json"), stA)
	writeJSON(t, filepath.Join(e.dir, "b.json"), stB)
	inProcessWest(t, e, addrA, &statesource.File{Path: filepath.Join(e.dir, "a.json")})
	inProcessWest(t, e, addrB, &statesource.File{Path: filepath.Join(e.dir, "b.json")})
	px := newProxy(t, addrA)
	e.pointAt(t, px.addr())
	rec := newRecorder()
	a := e.startAgent(t, rec, nil)
	testenv.WaitFor(t, wait, "synced with replica A", func() bool {
		ok, _ := ipcacheEquals(rec, 2, prefixesOf(stA))
		return ok && westOf(a).Ready
	})
	idA := westOf(a).EtcdClusterID
	px.swap(addrB)
	testenv.WaitFor(t, wait, "resynced with replica B", func() bool {
		ok, _ := ipcacheEquals(rec, 2, prefixesOf(stB))
		r := westOf(a)
		return ok && r.Ready && r.EtcdClusterID != idA
	})
	if r := westOf(a); !strings.Contains(r.LastError, "cluster changed") {
		t.Errorf("last error %q should say the etcd cluster changed", r.LastError)
	}
}

// pinnedRestart is east's agent restarted over its pinned maps: east's
// checkout not ready, so its service selects west's backends.
type pinnedRestart struct {
	e    *faultEnv
	maps *datapath.Maps // reopened for the second agent
}

// checkoutFE is east's shop/checkout port 80.
var checkoutFE = datapath.Frontend{Addr: CheckoutIP, Port: 80, Protocol: datapath.TCP}

// westBackends counts west's backends of shop/checkout in the maps.
func (p *pinnedRestart) westBackends() int {
	svcs, _ := p.maps.Services()
	n := 0
	for _, b := range svcs[checkoutFE] {
		if b.ClusterID == 2 {
			n++
		}
	}
	return n
}

// newPinnedRestart runs a first agent of east over pinned maps until west
// (already pointed at) is fully synced into them, stops it, calls westDown,
// and reopens the maps for the second agent.
func newPinnedRestart(t *testing.T, e *faultEnv, westDown func()) *pinnedRestart {
	t.Helper()
	pin := filepath.Join("/sys/fs/bpf", "cm-restart-test-"+filepath.Base(e.dir))
	maps, err := datapath.OpenMaps(datapath.Config{PinDir: pin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { datapath.RemovePins(pin) })
	p := &pinnedRestart{e: e, maps: maps}
	ctx, cancel := context.WithCancel(context.Background())
	first, err := agentsync.New(agentsync.Config{ClusterName: "east", ClusterID: 1, ConfigDir: e.configDir, Datapath: maps,
		LocalSource: &statesource.File{Path: filepath.Join(e.dir, "east.json")}, ProbeInterval: 100 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx) }()
	testenv.WaitFor(t, wait, "west fully synced: its backends and entries in the pinned maps", func() bool {
		ok, _ := ipcacheEquals(maps, 2, prefixesOf(SampleState(2)))
		return ok && p.westBackends() == 3 && westOf(first).Ready
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	maps.Close()
	westDown()
	if p.maps, err = datapath.OpenMaps(datapath.Config{PinDir: pin}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.maps.Close() })
	return p
}

// eastNotReady writes east's state with its checkout not ready.
func eastNotReady(t *testing.T, e *faultEnv) {
	t.Helper()
	east := SampleState(1)
	SetReady(east, "checkout", false) // east's service selects west's backends
	writeJSON(t, filepath.Join(e.dir, "east.json"), east)
}

// Test 7: an agent restarts over its pinned maps while a remote is down: the
// remote's ipcache entries and service backends stay in the datapath until
// the remote is back and synced.
func TestAgentRestartKeepsPinnedRemoteState(t *testing.T) {
	testenv.RequireRoot(t)
	e := newFaultEnv(t)
	eastNotReady(t, e)
	addr := freeAddr(t)
	writeJSON(t, filepath.Join(e.dir, "west.json"), SampleState(2))
	stop := inProcessWest(t, e, addr, &statesource.File{Path: filepath.Join(e.dir, "west.json")})
	e.pointAt(t, addr)
	p := newPinnedRestart(t, e, stop) // west goes down
	second := e.startAgent(t, p.maps, func(c *agentsync.Config) { c.SyncTimeout = time.Hour })
	testenv.WaitFor(t, wait, "the new agent tried west and failed", func() bool { return westOf(second).Failures > 0 })
	if n := p.westBackends(); n != 3 {
		t.Fatalf("after the restart with west down, the service has %d of west's 3 backends", n)
	}
	if ok, _ := ipcacheEquals(p.maps, 2, prefixesOf(SampleState(2))); !ok {
		t.Fatal("west's ipcache entries changed while west was down")
	}
	inProcessWest(t, e, addr, &statesource.File{Path: filepath.Join(e.dir, "west.json")})
	select {
	case <-second.Pruned():
	case <-time.After(wait):
		t.Fatal("no prune after west came back")
	}
	if n := p.westBackends(); n != 3 {
		t.Errorf("after west's return: %d of its 3 backends", n)
	}
}

// A hostile peer puts aliases of a valid entry's key ("10.2.1.12/32",
// "::ffff:10.2.1.12") and deletes them again: the puts are rejected as
// non-canonical keys, the deletes are ignored, and the valid entry stays in
// the datapath.
func TestAliasKeyDeleteKeepsValidEntry(t *testing.T) {
	m := startMesh(t, false, 1)
	testenv.WaitFor(t, wait, "mesh ready", func() bool { return allReady(m) })
	admin := adminClient(t, m.Cluster("west"))
	a := m.Cluster("east").Agents[0]
	valid := netip.MustParsePrefix("10.2.1.12/32")
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	resp, err := admin.Get(ctx, wire.IPCacheKey("10.2.1.12"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("west's entry for %s: %v %v", valid, resp, err)
	}
	value := string(resp.Kvs[0].Value)
	aliases := []string{"10.2.1.12/32", "::ffff:10.2.1.12", "::ffff:10.2.1.12/128"}
	for _, s := range aliases {
		if _, err := admin.Put(ctx, wire.IPCacheKey(s), value); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range aliases {
		if _, err := admin.Delete(ctx, wire.IPCacheKey(s)); err != nil {
			t.Fatal(err)
		}
	}
	// A valid entry after the deletes (in west's pod CIDR 10.2.1.0/24, so
	// west owns it): once it arrives, so have they.
	if _, err := admin.Put(ctx, wire.IPCacheKey("10.2.1.99"), `{"IP":"10.2.1.99","ID":131100}`); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "the entry put after the aliases' deletes applied", func() bool {
		ips, _ := a.Datapath.IPCache()
		_, ok := ips[netip.MustParsePrefix("10.2.1.99/32")]
		return ok
	})
	ips, err := a.Datapath.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := ips[valid]; !ok || e.ClusterID != 2 {
		t.Errorf("%s after its aliases were put and deleted: %+v, %v; want west's entry kept", valid, e, ok)
	}
	if r := remoteStatus(a, "west"); r.Rejected["non_canonical_key"] != uint64(len(aliases)) || r.Endpoints != 5 {
		t.Errorf("rejected %v, endpoints %d; want %d non_canonical_key and 5 endpoints", r.Rejected, r.Endpoints, len(aliases))
	}
}
