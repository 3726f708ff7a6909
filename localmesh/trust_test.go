package localmesh

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// westPut writes key=value into west's store with west's admin
// certificate: a hostile peer publishing whatever it likes.
func westPut(t *testing.T, admin *clientv3.Client, kv map[string]string) {
	t.Helper()
	for k, v := range kv {
		// Each put has the deadline: tens of values near the size limit
		// take longer together on a busy machine.
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		_, err := admin.Put(ctx, k, v)
		cancel()
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
	}
}

// ipcacheValue is an ipcache value of cluster id's identity for addr (a
// CIDR when bits are given).
func ipcacheValue(t *testing.T, addr string, bits int, identity uint32, host string) string {
	t.Helper()
	p := wire.IPIdentityPair{IP: netip.MustParseAddr(addr), ID: identity, HostIP: netip.MustParseAddr(host)}
	if bits > 0 {
		p.Mask = make([]byte, 4)
		for i := 0; i < bits; i++ {
			p.Mask[i/8] |= 0x80 >> (i % 8)
		}
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A peer with a lower cluster id (west, 2) publishes north's (3) pod
// address with its own identity, a /16 over north's pod CIDRs, a node whose
// pod CIDR is north's, and a service backend at an address no node of west
// has. East's datapath keeps north's pod as north's, holds none of west's
// claims, and its status says what west published that is not in force.
func TestHostilePeerCannotTakeOverAnotherPeersAddresses(t *testing.T) {
	testenv.RequireRoot(t)
	m := startMesh(t, true, 1)
	testenv.WaitFor(t, wait, "mesh ready", func() bool { return allReady(m) })
	a := m.Cluster("east").Agents[0]
	northPod := netip.MustParsePrefix("10.3.1.12/32") // north's checkout-2, on north's node-1 (10.3.1.0/24)
	ips, err := a.Datapath.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	before := ips[northPod]
	if before.ClusterID != 3 {
		t.Fatalf("north's pod %s before the attack: %+v", northPod, before)
	}

	admin := adminClient(t, m.Cluster("west"))
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	resp, err := admin.Get(ctx, wire.ServiceKey("west", "shop", "checkout"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("west's checkout service: %v %v", resp, err)
	}
	var svc map[string]any
	if err := json.Unmarshal(resp.Kvs[0].Value, &svc); err != nil {
		t.Fatal(err)
	}
	backends := svc["backends"].(map[string]any)
	var somePorts any
	for _, ports := range backends {
		somePorts = ports
	}
	backends["10.66.0.1"] = somePorts  // no node of west has this address
	backends["10.3.1.100"] = somePorts // north's frontend pod
	svcValue, err := json.Marshal(svc)
	if err != nil {
		t.Fatal(err)
	}
	westID := uint32(2<<16 + 100)
	westPut(t, admin, map[string]string{
		wire.IPCacheKey("10.3.1.12"):   ipcacheValue(t, "10.3.1.12", 0, westID, "192.168.2.1"),
		wire.IPCacheKey("10.3.1.99"):   ipcacheValue(t, "10.3.1.99", 0, westID, "192.168.2.1"),
		wire.IPCacheKey("10.3.0.0/16"): ipcacheValue(t, "10.3.0.0", 16, westID, "192.168.2.1"),
		wire.NodeKey("west", "evil"): fmt.Sprintf(`{"Name":"evil","Cluster":"west","ClusterID":2,"IPAddresses":[{"Type":"InternalIP","IP":"192.168.2.9"}],` +
			`"IPv4AllocCIDR":{"IP":"10.3.1.0","Mask":"////AA=="}}`),
		wire.ServiceKey("west", "shop", "checkout"): string(svcValue),
	})
	// A valid entry of west after the attack: once it is in, so is the rest.
	westPut(t, admin, map[string]string{wire.IPCacheKey("10.2.1.99"): ipcacheValue(t, "10.2.1.99", 0, westID, "192.168.2.1")})
	testenv.WaitFor(t, wait, "west's valid new entry in east's maps", func() bool {
		ips, _ := a.Datapath.IPCache()
		return ips[netip.MustParsePrefix("10.2.1.99/32")].ClusterID == 2
	})
	testenv.WaitFor(t, wait, "west's service update applied", func() bool {
		return remoteStatus(a, "west").NotInForce.BackendsOutside > 0
	})

	ips, err = a.Datapath.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	if got := ips[northPod]; got != before {
		t.Errorf("north's pod %s after west's claims: %+v, want north's %+v", northPod, got, before)
	}
	for _, p := range []string{"10.3.1.99/32", "10.3.0.0/16"} {
		if e, ok := ips[netip.MustParsePrefix(p)]; ok {
			t.Errorf("west's claim %s reached the datapath: %+v", p, e)
		}
	}
	if n := checkoutRemote(a, "west"); n != 3 {
		t.Errorf("west's checkout backends counted in east's service: %d, want its 3 own (not the 2 outside its ranges)", n)
	}
	nf := remoteStatus(a, "west").NotInForce
	if nf.IPCacheClaimed != 2 || nf.IPCacheOutside != 1 || nf.BackendsOutside != 2 {
		t.Errorf("west's not-in-force counts %+v, want 2 ipcache entries claimed by north first (10.3.1.12, 10.3.1.99: west's evil node states north's range too late), 1 outside (10.3.0.0/16) and 2 backends outside", nf)
	}
	if r := remoteStatus(a, "north"); r.NotInForce.Total() != 0 || !r.Ready {
		t.Errorf("north: ready %v, not in force %+v; want ready and everything in force", r.Ready, r.NotInForce)
	}
}

// One peer publishing far more than its share is refused beyond its limit,
// says so in status, and another peer's new endpoint still reaches the
// datapath.
func TestPeerOverItsLimitDoesNotCrowdOutOthers(t *testing.T) {
	const limit = 8
	m := startMeshWith(t, Options{Agent: func(c *agentsync.Config) { c.RemoteLimits.IPCache = limit }})
	testenv.WaitFor(t, wait, "mesh ready", func() bool { return allReady(m) })
	a := m.Cluster("east").Agents[0]

	flood := map[string]string{}
	for i := range 40 {
		addr := fmt.Sprintf("10.2.2.%d", 100+i)
		flood[wire.IPCacheKey(addr)] = ipcacheValue(t, addr, 0, 2<<16+100, "192.168.2.2")
	}
	westPut(t, adminClient(t, m.Cluster("west")), flood)
	westPut(t, adminClient(t, m.Cluster("north")), map[string]string{
		wire.IPCacheKey("10.3.2.77"): ipcacheValue(t, "10.3.2.77", 0, 3<<16+100, "192.168.3.2")})

	testenv.WaitFor(t, wait, "north's new endpoint in east's datapath", func() bool {
		ips, _ := a.Datapath.IPCache()
		return ips[netip.MustParsePrefix("10.3.2.77/32")].ClusterID == 3
	})
	testenv.WaitFor(t, wait, "west's flood applied up to its limit", func() bool {
		r := remoteStatus(a, "west")
		return r.Rejected["over_limit"] == uint64(40+4-limit)
	})
	r := remoteStatus(a, "west")
	if r.Endpoints != limit {
		t.Errorf("west holds %d endpoints, want its limit %d", r.Endpoints, limit)
	}
	if len(r.OverLimit) != 1 || r.OverLimit[0].Kind != "ipcache" || r.OverLimit[0].Flag != "--max-remote-ipcache-entries" || r.OverLimit[0].Refused != uint64(40+4-limit) {
		t.Errorf("west's over-limit status %+v, want ipcache with its flag and %d refused", r.OverLimit, 40+4-limit)
	}
	ips, _ := a.Datapath.IPCache()
	n := 0
	for _, e := range ips {
		if e.ClusterID == 2 {
			n++
		}
	}
	if n != limit {
		t.Errorf("east's datapath holds %d of west's entries, want %d", n, limit)
	}
}

// checkoutRemote is how many backends of remote the agent's shop/checkout
// port 80 counts (selected or not: affinity local keeps them out of the
// datapath while east's own are healthy).
func checkoutRemote(a *Agent, remote string) int {
	for _, s := range a.Sync.Status().Services {
		if s.Namespace == "shop" && s.Name == "checkout" && strings.HasSuffix(s.Frontend, ":80/TCP") {
			return s.Remote[remote]
		}
	}
	return -1
}

// A remote service whose update is refused (a value over the size limit)
// loses its backends in the datapath — its old ones are known wrong — and
// status says so; a valid update restores them.
func TestRefusedServiceUpdateWithdrawsItsBackends(t *testing.T) {
	m := startMesh(t, false, 1)
	testenv.WaitFor(t, wait, "mesh ready", func() bool { return allReady(m) })
	a := m.Cluster("east").Agents[0]
	westBackends := func() int { return checkoutRemote(a, "west") }
	testenv.WaitFor(t, wait, "west's checkout backends in east's datapath", func() bool { return westBackends() > 0 })

	admin := adminClient(t, m.Cluster("west"))
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	key := wire.ServiceKey("west", "shop", "checkout")
	resp, err := admin.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("west's checkout: %v %v", resp, err)
	}
	valid := string(resp.Kvs[0].Value)
	huge := strings.Replace(valid, `"labels":`, `"hostnames":{"pad":"`+strings.Repeat("x", wire.MaxValueBytes)+`"},"labels":`, 1)
	westPut(t, admin, map[string]string{key: huge})
	testenv.WaitFor(t, wait, "west's checkout withdrawn after its refused update", func() bool {
		r := remoteStatus(a, "west")
		return len(r.Withdrawn) == 1 && westBackends() == 0
	})
	if w := remoteStatus(a, "west").Withdrawn[0]; w.Service != "shop/checkout" || w.Reason != "value_too_large" {
		t.Errorf("withdrawn %+v, want shop/checkout for value_too_large", w)
	}
	westPut(t, admin, map[string]string{key: valid})
	testenv.WaitFor(t, wait, "west's checkout back after a valid update", func() bool {
		return len(remoteStatus(a, "west").Withdrawn) == 0 && westBackends() > 0
	})
}

// An agent restarted while a peer's apiserver is down (SIGKILLed) for
// longer than --sync-timeout keeps everything that peer said: its ipcache
// entries and its service backends stay in the pinned maps after the
// timeout, and status tells what is kept and for whom. When the peer comes
// back with one endpoint fewer, exactly that endpoint is pruned.
func TestRestartWithPeerDownPastSyncTimeoutPrunesNothing(t *testing.T) {
	testenv.RequireRoot(t)
	e := newFaultEnv(t)
	eastNotReady(t, e)
	westFile := filepath.Join(e.dir, "west.json")
	writeJSON(t, westFile, SampleState(2))
	spec := processSpec{Cluster: "west", ID: 2, Listen: freeAddr(t), CertDir: e.west.Dir, Peers: []string{"east"}, StateFile: westFile}
	west := startAPIServerProcess(t, spec)
	e.pointAt(t, spec.Listen)
	p := newPinnedRestart(t, e, west.kill) // SIGKILL: west's control plane is gone
	maps, westBackends := p.maps, p.westBackends
	second := e.startAgent(t, maps, func(c *agentsync.Config) { c.SyncTimeout = 200 * time.Millisecond })
	select {
	case <-second.Pruned(): // the sync timeout passed
	case <-time.After(wait):
		t.Fatal("Pruned not closed after the sync timeout")
	}
	testenv.WaitFor(t, wait, "the new agent tried west and failed", func() bool { return westOf(second).Failures > 0 })
	if ok, diff := ipcacheEquals(maps, 2, prefixesOf(SampleState(2))); !ok {
		t.Errorf("west's ipcache entries changed while west was down past the sync timeout: %s", diff)
	}
	if n := westBackends(); n != 3 {
		t.Errorf("west's backends after the sync timeout with west down: %d, want 3", n)
	}
	rt := second.Status().Retained
	if rt == nil || rt.IPCache != 4 || rt.Backends != 3 || len(rt.WaitingFor) != 1 || rt.WaitingFor[0] != "west" {
		t.Errorf("status retained %+v, want west's 4 ipcache entries and 3 backends, waiting for west", rt)
	}

	// West comes back without checkout-3 (10.2.2.13).
	gone := netip.MustParsePrefix("10.2.2.13/32")
	back := SampleState(2)
	back.Endpoints = slices.DeleteFunc(back.Endpoints, func(ep *statesource.Endpoint) bool { return ep.Pod == "checkout-3" })
	writeJSON(t, westFile, back)
	startAPIServerProcess(t, spec)
	testenv.WaitFor(t, wait, "west resynced: only its gone endpoint pruned", func() bool {
		ok, _ := ipcacheEquals(maps, 2, prefixesOf(back))
		return ok && westBackends() == 2 && westOf(second).Ready
	})
	if ips, _ := maps.IPCache(); ips[gone].ClusterID != 0 {
		t.Errorf("%s (gone from west) still in the ipcache", gone)
	}
	if rt := second.Status().Retained; rt != nil {
		t.Errorf("status still retains %+v after west synced", rt)
	}
}

// A peer publishing many values near the size limit does not make the
// agent read them in one page: pages are bounded by bytes, so the list
// holds a few pages' worth of values at a time, not the whole prefix.
func TestListPagesAreBoundedByBytes(t *testing.T) {
	const pageBytes = 4 << 20
	const values, size = 48, 900 << 10
	e := newFaultEnv(t)
	addr := freeAddr(t)
	writeJSON(t, filepath.Join(e.dir, "west.json"), SampleState(2))
	inProcessWest(t, e, addr, &statesource.File{Path: filepath.Join(e.dir, "west.json")})
	e.pointAt(t, addr)
	admin := westAdmin(t, e, addr)
	junk := map[string]string{}
	for i := range values {
		junk[wire.IPCacheKey(fmt.Sprintf("10.2.1.%d", 150+i))] = `"` + strings.Repeat("j", size) + `"`
	}
	westPut(t, admin, junk)
	a := e.startAgent(t, datapath.NewMemory(), func(c *agentsync.Config) { c.ListPageBytes = pageBytes })
	// 43 MB of values to list: on a busy machine under the race detector
	// that takes longer than the usual wait.
	defer func() {
		if t.Failed() {
			r := westOf(a)
			t.Logf("west: ready %v, lists %v, failures %d, last error %q", r.Ready, r.Lists, r.Failures, r.LastError)
		}
	}()
	testenv.WaitFor(t, 2*time.Minute, "west listed", func() bool { return westOf(a).Ready })
	r := westOf(a)
	// The agent reads no response over the page bound plus one value, or
	// 8 MiB (room for a publishing transaction on a watch).
	bound := max(int64(pageBytes+wire.MaxValueBytes+wire.MaxKeyBytes+64<<10), 8<<20)
	if got := r.MaxListPageBytes["ipcache"]; got == 0 || got > bound {
		t.Errorf("largest ipcache page %d bytes, want at most %d", got, bound)
	}
	if r.RejectedTotal() != values || r.Endpoints != 4 {
		t.Errorf("rejected %v, endpoints %d; want the %d junk values rejected and west's 4 endpoints", r.Rejected, r.Endpoints, values)
	}
}
