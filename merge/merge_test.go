package merge

import (
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// The merge tests use one local cluster (id 1) and two remotes, cluster-a
// (id 2) and cluster-b (id 3). The local global service shop/web has two
// ports: "http" TCP 80→8080 and "dns" UDP 53.

const mgLocalID = 1

var (
	mgClusterA = wire.Cluster{Name: "cluster-a", ID: 2, MaxConnectedClusters: wire.DefaultMaxConnectedClusters}
	mgClusterB = wire.Cluster{Name: "cluster-b", ID: 3, MaxConnectedClusters: wire.DefaultMaxConnectedClusters}

	mgWeb       = ServiceName{"shop", "web"}
	mgClusterIP = netip.MustParseAddr("10.96.0.10")
	mgFEHTTP    = datapath.Frontend{Addr: mgClusterIP, Port: 80, Protocol: datapath.TCP}
	mgFEDNS     = datapath.Frontend{Addr: mgClusterIP, Port: 53, Protocol: datapath.UDP}
	// mgFEInternal is the frontend of shop/internal, a service that is not
	// global and must never be written by the merger.
	mgFEInternal = datapath.Frontend{Addr: netip.MustParseAddr("10.96.0.20"), Port: 80, Protocol: datapath.TCP}
)

// mgCountingWriter is the in-memory datapath that counts every write the
// merger issues.
type mgCountingWriter struct {
	*datapath.Memory
	upsertSvc, deleteSvc, upsertIP, deleteIP int
}

func (w *mgCountingWriter) UpsertService(f datapath.Frontend, bs []datapath.Backend) error {
	w.upsertSvc++
	return w.Memory.UpsertService(f, bs)
}

func (w *mgCountingWriter) DeleteService(f datapath.Frontend) error {
	w.deleteSvc++
	return w.Memory.DeleteService(f)
}

func (w *mgCountingWriter) UpsertIPCache(p netip.Prefix, e datapath.IPCacheEntry) error {
	w.upsertIP++
	return w.Memory.UpsertIPCache(p, e)
}

func (w *mgCountingWriter) DeleteIPCache(p netip.Prefix) error {
	w.deleteIP++
	return w.Memory.DeleteIPCache(p)
}

func (w *mgCountingWriter) writes() int { return w.upsertSvc + w.deleteSvc + w.upsertIP + w.deleteIP }

func (w *mgCountingWriter) reset() { w.upsertSvc, w.deleteSvc, w.upsertIP, w.deleteIP = 0, 0, 0, 0 }

func mgNewMerger(t *testing.T) (*Merger, *mgCountingWriter) {
	t.Helper()
	dp := &mgCountingWriter{Memory: datapath.NewMemory()}
	m := newMerger(dp, "local", mgLocalID, slog.New(slog.DiscardHandler))
	m.trustAddresses = true // the merge mechanics; ownership_test.go checks ranges
	return m, dp
}

func mgBool(b bool) *bool { return &b }

// mgLocalState is the local cluster: shop/web (global, with the given
// affinity annotation unless empty) selecting web-0 and web-1 with the given
// readiness, and shop/internal (not global) selecting the same pods.
func mgLocalState(affinity string, webReady bool) *statesource.State {
	ann := map[string]string{wire.AnnotationGlobal: "true"}
	if affinity != "" {
		ann[wire.AnnotationAffinity] = affinity
	}
	return &statesource.State{
		Nodes: []statesource.Node{{Name: "node-1", IPs: []netip.Addr{netip.MustParseAddr("192.168.0.1")}}},
		Endpoints: []*statesource.Endpoint{
			{Namespace: "shop", Pod: "web-0", IP: netip.MustParseAddr("10.1.0.1"), Node: "node-1", Labels: map[string]string{"app": "web"}, Ready: mgBool(webReady)},
			{Namespace: "shop", Pod: "web-1", IP: netip.MustParseAddr("10.1.0.2"), Node: "node-1", Labels: map[string]string{"app": "web"}, Ready: mgBool(webReady)},
			{Namespace: "shop", Pod: "other-0", IP: netip.MustParseAddr("10.1.0.9"), Node: "node-1", Labels: map[string]string{"app": "other"}},
		},
		Services: []statesource.Service{
			{
				Namespace: "shop", Name: "web", ClusterIP: mgClusterIP,
				Ports: []statesource.ServicePort{
					{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"},
					{Name: "dns", Port: 53, Protocol: "UDP"},
				},
				Selector:    map[string]string{"app": "web"},
				Annotations: ann,
			},
			{
				Namespace: "shop", Name: "internal", ClusterIP: mgFEInternal.Addr,
				Ports:    []statesource.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}},
				Selector: map[string]string{"app": "web"},
			},
		},
	}
}

// mgRemote is cluster c's view of a global service, converted as the agent
// converts what it reads from etcd: every ip has "http" TCP 8080 and "dns"
// UDP 53.
func mgRemote(c wire.Cluster, shared bool, ips ...string) *RemoteService {
	cs := &wire.ClusterService{
		Cluster: c.Name, ClusterID: c.ID, Namespace: mgWeb.Namespace, Name: mgWeb.Name,
		Shared: shared, Backends: map[string]wire.PortConfiguration{},
	}
	for _, ip := range ips {
		cs.Backends[ip] = wire.PortConfiguration{
			"http": {Protocol: "TCP", Port: 8080},
			"dns":  {Protocol: "UDP", Port: 53},
		}
	}
	return NewRemoteService(c, cs)
}

func mgBE(ip string, port uint16, proto datapath.Protocol, cluster uint16) datapath.Backend {
	return datapath.Backend{Addr: netip.MustParseAddr(ip), Port: port, Protocol: proto, ClusterID: cluster}
}

// mgHTTP and mgDNS are the backends of the two ports at ip in cluster id.
func mgHTTP(ip string, cluster uint16) datapath.Backend { return mgBE(ip, 8080, datapath.TCP, cluster) }
func mgDNS(ip string, cluster uint16) datapath.Backend  { return mgBE(ip, 53, datapath.UDP, cluster) }

// mgWantServices fails unless the datapath holds exactly want.
func mgWantServices(t *testing.T, dp datapath.Reader, want map[datapath.Frontend][]datapath.Backend) {
	t.Helper()
	got, err := dp.Services()
	if err != nil {
		t.Fatalf("Services: %v", err)
	}
	for fe, bs := range want {
		g, ok := got[fe]
		if !ok {
			t.Errorf("frontend %s missing from the datapath; want backends %v", fe, bs)
			continue
		}
		if !slices.Equal(g, bs) {
			t.Errorf("frontend %s:\n got backends %v\nwant backends %v", fe, g, bs)
		}
	}
	for fe, bs := range got {
		if _, ok := want[fe]; !ok {
			t.Errorf("unexpected frontend %s in the datapath (backends %v)", fe, bs)
		}
	}
}

func mgWantIPCache(t *testing.T, dp datapath.Reader, want map[netip.Prefix]datapath.IPCacheEntry) {
	t.Helper()
	got, err := dp.IPCache()
	if err != nil {
		t.Fatalf("IPCache: %v", err)
	}
	if !maps.Equal(got, want) {
		t.Errorf("ipcache:\n got %v\nwant %v", got, want)
	}
}

// --- selectBackends ---------------------------------------------------------

func TestSelectBackends(t *testing.T) {
	l1, l2 := mgHTTP("10.1.0.1", 1), mgHTTP("10.1.0.2", 1)
	a1 := mgHTTP("10.2.0.1", 2)
	b1, b2 := mgHTTP("10.3.0.1", 3), mgHTTP("10.3.0.2", 3)
	local := []datapath.Backend{l2, l1}
	remote := map[string][]datapath.Backend{"cluster-b": {b2, b1}, "cluster-a": {a1}}

	tests := []struct {
		name     string
		affinity string
		local    []datapath.Backend
		remote   map[string][]datapath.Backend
		want     []datapath.Backend
		wantFrom string
	}{
		{"local affinity with healthy local uses only local", wire.AffinityLocal, local, remote, []datapath.Backend{l1, l2}, "local"},
		{"local affinity without healthy local fails over to all remote", wire.AffinityLocal, nil, remote, []datapath.Backend{a1, b1, b2}, "remote"},
		{"local affinity with nothing anywhere", wire.AffinityLocal, nil, nil, nil, "none"},
		{"remote affinity with remote uses only remote", wire.AffinityRemote, local, remote, []datapath.Backend{a1, b1, b2}, "remote"},
		{"remote affinity without remote falls back to local", wire.AffinityRemote, local, nil, []datapath.Backend{l1, l2}, "local"},
		{"remote affinity with empty remote lists falls back to local", wire.AffinityRemote, local, map[string][]datapath.Backend{"cluster-a": {}}, []datapath.Backend{l1, l2}, "local"},
		{"remote affinity with nothing anywhere", wire.AffinityRemote, nil, map[string][]datapath.Backend{}, nil, "none"},
		{"none uses local and remote", wire.AffinityNone, local, remote, []datapath.Backend{l1, l2, a1, b1, b2}, "local+remote"},
		{"none with only local", wire.AffinityNone, local, nil, []datapath.Backend{l1, l2}, "local"},
		{"none with only remote", wire.AffinityNone, nil, remote, []datapath.Backend{a1, b1, b2}, "remote"},
		{"none with nothing anywhere", wire.AffinityNone, nil, nil, nil, "none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, from := lbPolicy{affinity: tt.affinity}.selectBackends("here", tt.local, tt.remote)
			if !slices.Equal(got, tt.want) {
				t.Errorf("selected %v, want %v", got, tt.want)
			}
			if from != tt.wantFrom {
				t.Errorf("selectedFrom %q, want %q", from, tt.wantFrom)
			}
		})
	}
}

func TestSelectBackendsDoesNotReorderCallerSlices(t *testing.T) {
	l1, l2 := mgHTTP("10.1.0.1", 1), mgHTTP("10.1.0.2", 1)
	local := []datapath.Backend{l2, l1}
	lbPolicy{affinity: wire.AffinityLocal}.selectBackends("here", local, nil)
	lbPolicy{affinity: wire.AffinityNone}.selectBackends("here", local, nil)
	if !slices.Equal(local, []datapath.Backend{l2, l1}) {
		t.Errorf("selectBackends reordered the caller's local slice: %v", local)
	}
}

// The same backends, however the remote map was built and iterated and in
// whatever order each list came, give the same slice: slots do not move on
// a recomputation.
func TestSelectBackendsSortedDeterministically(t *testing.T) {
	var all []datapath.Backend
	clusters := []string{"c5", "c4", "c3", "c2"}
	for i := range clusters {
		id := uint16(5 - i) // c5 has id 5, ... c2 has id 2
		for _, ip := range []string{"10.0.0.9", "10.0.0.10", "fd00::1", "10.0.0.2"} {
			all = append(all, mgBE(ip, 8080, datapath.TCP, id), mgBE(ip, 80, datapath.TCP, id))
		}
	}
	build := func(order []int, reverse bool) map[string][]datapath.Backend {
		m := map[string][]datapath.Backend{}
		for _, i := range order {
			bs := slices.Clone(all[i*8 : (i+1)*8])
			if reverse {
				slices.Reverse(bs)
			}
			m[clusters[i]] = bs
		}
		return m
	}
	local := []datapath.Backend{mgBE("10.1.0.2", 8080, datapath.TCP, 1), mgBE("10.1.0.1", 8080, datapath.TCP, 1)}

	first, _ := lbPolicy{affinity: wire.AffinityNone}.selectBackends("here", local, build([]int{0, 1, 2, 3}, false))
	if len(first) != len(all)+len(local) {
		t.Fatalf("selected %d backends, want %d", len(first), len(all)+len(local))
	}
	if !slices.IsSortedFunc(first, func(a, b datapath.Backend) int {
		switch {
		case backendLess(a, b):
			return -1
		case backendLess(b, a):
			return 1
		}
		return 0
	}) {
		t.Fatalf("result not sorted by cluster id, address, port, protocol: %v", first)
	}
	if first[0].ClusterID != 1 || first[len(first)-1].ClusterID != 5 {
		t.Errorf("result not ordered by cluster id first: %v", first)
	}
	for i := range 50 {
		order := []int{3, 1, 0, 2}
		if i%2 == 0 {
			order = []int{2, 0, 3, 1}
		}
		got, _ := lbPolicy{affinity: wire.AffinityNone}.selectBackends("here", []datapath.Backend{local[1], local[0]}, build(order, i%3 == 0))
		if !slices.Equal(got, first) {
			t.Fatalf("run %d: same input in another order selected\n%v\nfirst run selected\n%v", i, got, first)
		}
	}
}

// --- merger: services -------------------------------------------------------

func TestMergerWritesGlobalServicePerPort(t *testing.T) {
	m, dp := mgNewMerger(t)
	m.SetLocal(mgLocalState("", true))
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	m.SetRemoteService("cluster-b", mgWeb, mgRemote(mgClusterB, true, "10.3.0.2", "10.3.0.1"))

	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {
			mgHTTP("10.1.0.1", 1), mgHTTP("10.1.0.2", 1), // target port 8080
			mgHTTP("10.2.0.1", 2),
			mgHTTP("10.3.0.1", 3), mgHTTP("10.3.0.2", 3),
		},
		mgFEDNS: {
			mgDNS("10.1.0.1", 1), mgDNS("10.1.0.2", 1), // no target port: 53
			mgDNS("10.2.0.1", 2),
			mgDNS("10.3.0.1", 3), mgDNS("10.3.0.2", 3),
		},
	})
	svcs, _ := dp.Services()
	if _, ok := svcs[mgFEInternal]; ok {
		t.Errorf("non-global service shop/internal was written to the datapath")
	}
}

func TestMergerLocalOnlyGlobalServiceIsWrittenBeforeAnyRemote(t *testing.T) {
	m, dp := mgNewMerger(t)
	m.SetLocal(mgLocalState(wire.AffinityNone, true))
	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.1.0.1", 1), mgHTTP("10.1.0.2", 1)},
		mgFEDNS:  {mgDNS("10.1.0.1", 1), mgDNS("10.1.0.2", 1)},
	})
}

func TestMergerRemoteBackendMustMatchPortNameAndProtocol(t *testing.T) {
	m, dp := mgNewMerger(t)
	m.SetLocal(mgLocalState(wire.AffinityNone, false))
	// cluster-a names its DNS port "dns" but serves it over TCP, and has a
	// port "metrics" the local service does not have.
	m.SetRemoteService("cluster-a", mgWeb, NewRemoteService(mgClusterA, &wire.ClusterService{
		Cluster: "cluster-a", ClusterID: 2, Namespace: "shop", Name: "web", Shared: true,
		Backends: map[string]wire.PortConfiguration{"10.2.0.1": {
			"http":    {Protocol: "TCP", Port: 8080},
			"dns":     {Protocol: "TCP", Port: 53},
			"metrics": {Protocol: "TCP", Port: 9090},
		}},
	}))
	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.2.0.1", 2)},
		mgFEDNS:  {}, // kept with zero slots
	})
}

func TestMergerNonGlobalServiceNotWritten(t *testing.T) {
	m, dp := mgNewMerger(t)
	st := mgLocalState("", true)
	st.Services = st.Services[1:] // only shop/internal
	m.SetLocal(st)
	// Even with remote backends for a same-named service.
	m.SetRemoteService("cluster-a", ServiceName{"shop", "internal"}, mgRemote(mgClusterA, true, "10.2.0.1"))
	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{})
}

func TestMergerServiceNoLongerGlobalIsDeleted(t *testing.T) {
	m, dp := mgNewMerger(t)
	m.SetLocal(mgLocalState("", true))
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))

	st := mgLocalState("", true)
	delete(st.Services[0].Annotations, wire.AnnotationGlobal)
	m.SetLocal(st)
	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{})

	m.SetLocal(mgLocalState("", true)) // global again
	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.1.0.1", 1), mgHTTP("10.1.0.2", 1), mgHTTP("10.2.0.1", 2)},
		mgFEDNS:  {mgDNS("10.1.0.1", 1), mgDNS("10.1.0.2", 1), mgDNS("10.2.0.1", 2)},
	})
}

func TestMergerRemoteOnlyServiceNotWritten(t *testing.T) {
	m, dp := mgNewMerger(t)
	m.SetLocal(mgLocalState("", true))
	api := ServiceName{"shop", "api"}
	rs := mgRemote(mgClusterA, true, "10.2.0.1", "10.2.0.2")
	m.SetRemoteService("cluster-a", api, rs)

	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.1.0.1", 1), mgHTTP("10.1.0.2", 1)},
		mgFEDNS:  {mgDNS("10.1.0.1", 1), mgDNS("10.1.0.2", 1)},
	})

	var found bool
	for _, s := range m.ServiceStatuses() {
		if s.Namespace != "shop" || s.Name != "api" {
			continue
		}
		found = true
		if !strings.Contains(s.Warning, "only in remote") {
			t.Errorf("remote-only service warning = %q, want it to say it exists only in remote clusters", s.Warning)
		}
		if s.Selected != 0 || s.SelectedFrom != "none" {
			t.Errorf("remote-only service: selected %d from %q, want 0 from none", s.Selected, s.SelectedFrom)
		}
		if s.Remote["cluster-a"] != 4 || s.RemoteTotal != 4 { // 2 ips × 2 ports
			t.Errorf("remote-only service: remote %v total %d, want cluster-a: 4, total 4", s.Remote, s.RemoteTotal)
		}
	}
	if !found {
		t.Fatalf("serviceStatuses has no line for the remote-only service shop/api: %+v", m.ServiceStatuses())
	}
}

func TestMergerAffinityLocalFailsOverAndBack(t *testing.T) {
	m, dp := mgNewMerger(t)
	m.SetLocal(mgLocalState(wire.AffinityLocal, true))
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	m.SetRemoteService("cluster-b", mgWeb, mgRemote(mgClusterB, true, "10.3.0.1"))

	localOnly := map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.1.0.1", 1), mgHTTP("10.1.0.2", 1)},
		mgFEDNS:  {mgDNS("10.1.0.1", 1), mgDNS("10.1.0.2", 1)},
	}
	mgWantServices(t, dp, localOnly)

	m.SetLocal(mgLocalState(wire.AffinityLocal, false)) // every local endpoint not ready
	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.2.0.1", 2), mgHTTP("10.3.0.1", 3)},
		mgFEDNS:  {mgDNS("10.2.0.1", 2), mgDNS("10.3.0.1", 3)},
	})

	m.SetLocal(mgLocalState(wire.AffinityLocal, true)) // ready again
	mgWantServices(t, dp, localOnly)
}

func TestMergerAffinityLocalOneHealthyLocalSuffices(t *testing.T) {
	m, dp := mgNewMerger(t)
	st := mgLocalState(wire.AffinityLocal, true)
	st.Endpoints[0].Ready = mgBool(false) // web-0 not ready, web-1 ready
	m.SetLocal(st)
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.1.0.2", 1)},
		mgFEDNS:  {mgDNS("10.1.0.2", 1)},
	})
}

func TestMergerAffinityRemoteFallsBackToLocal(t *testing.T) {
	m, dp := mgNewMerger(t)
	m.SetLocal(mgLocalState(wire.AffinityRemote, true))
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.2.0.1", 2)},
		mgFEDNS:  {mgDNS("10.2.0.1", 2)},
	})

	m.SetRemoteService("cluster-a", mgWeb, nil)
	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.1.0.1", 1), mgHTTP("10.1.0.2", 1)},
		mgFEDNS:  {mgDNS("10.1.0.1", 1), mgDNS("10.1.0.2", 1)},
	})
}

func TestMergerRemoteUpdateReplacesOnlyItsOwnBackends(t *testing.T) {
	m, dp := mgNewMerger(t)
	m.SetLocal(mgLocalState(wire.AffinityNone, false)) // remote backends only
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1", "10.2.0.2"))
	m.SetRemoteService("cluster-b", mgWeb, mgRemote(mgClusterB, true, "10.3.0.1"))

	// cluster-a's new view replaces both of its backends with one other.
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.7"))
	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.2.0.7", 2), mgHTTP("10.3.0.1", 3)},
		mgFEDNS:  {mgDNS("10.2.0.7", 2), mgDNS("10.3.0.1", 3)},
	})

	// cluster-a's service deleted: cluster-b's backends stay.
	m.SetRemoteService("cluster-a", mgWeb, nil)
	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.3.0.1", 3)},
		mgFEDNS:  {mgDNS("10.3.0.1", 3)},
	})
}

func TestMergerUnsharedRemoteContributesNoBackends(t *testing.T) {
	m, dp := mgNewMerger(t)
	m.SetLocal(mgLocalState(wire.AffinityNone, true))
	unshared := mgRemote(mgClusterA, false, "10.2.0.1")
	if n := len(unshared.backends); n != 0 {
		t.Fatalf("NewRemoteService with Shared=false kept backends for %d ports: %v", n, unshared.backends)
	}
	m.SetRemoteService("cluster-a", mgWeb, unshared)
	m.SetRemoteService("cluster-b", mgWeb, mgRemote(mgClusterB, true, "10.3.0.1"))
	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.1.0.1", 1), mgHTTP("10.1.0.2", 1), mgHTTP("10.3.0.1", 3)},
		mgFEDNS:  {mgDNS("10.1.0.1", 1), mgDNS("10.1.0.2", 1), mgDNS("10.3.0.1", 3)},
	})
}

func TestMergerToRemoteServiceConvertsBackends(t *testing.T) {
	rs := NewRemoteService(mgClusterA, &wire.ClusterService{
		Cluster: "cluster-a", ClusterID: 2, Namespace: "shop", Name: "web", Shared: true,
		Backends: map[string]wire.PortConfiguration{
			"::ffff:10.2.0.1": {"http": {Protocol: "TCP", Port: 8080}},
			"fd00::2":         {"http": {Protocol: "TCP", Port: 8080}, "dns": {Protocol: "UDP", Port: 53}},
		},
	})
	if rs.clusterID != 2 {
		t.Errorf("clusterID %d, want 2", rs.clusterID)
	}
	http := slices.SortedFunc(slices.Values(rs.backends["http"]), func(a, b datapath.Backend) int { return a.Addr.Compare(b.Addr) })
	if want := []datapath.Backend{mgHTTP("10.2.0.1", 2), mgHTTP("fd00::2", 2)}; !slices.Equal(http, want) {
		t.Errorf("http backends %v, want %v (v4-mapped unmapped, cluster id set)", http, want)
	}
	if want := []datapath.Backend{mgDNS("fd00::2", 2)}; !slices.Equal(rs.backends["dns"], want) {
		t.Errorf("dns backends %v, want %v", rs.backends["dns"], want)
	}
}

func TestMergerDropCluster(t *testing.T) {
	m, dp := mgNewMerger(t)
	m.SetLocal(mgLocalState(wire.AffinityNone, true))
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	m.SetRemoteService("cluster-b", mgWeb, mgRemote(mgClusterB, true, "10.3.0.1"))
	api := ServiceName{"shop", "api"}
	m.SetRemoteService("cluster-a", api, mgRemote(mgClusterA, true, "10.2.0.5"))

	pa := netip.MustParsePrefix("10.2.0.1/32")
	pb := netip.MustParsePrefix("10.3.0.1/32")
	shared := netip.MustParsePrefix("10.9.0.0/24")
	ea := datapath.IPCacheEntry{Identity: 1000, TunnelEndpoint: netip.MustParseAddr("192.168.2.1"), ClusterID: 2}
	eb := datapath.IPCacheEntry{Identity: 2000, TunnelEndpoint: netip.MustParseAddr("192.168.3.1"), ClusterID: 3}
	m.setIP("cluster-a", pa, &ipClaim{clusterID: 2, entry: ea})
	m.setIP("cluster-b", pb, &ipClaim{clusterID: 3, entry: eb})
	m.setIP("cluster-a", shared, &ipClaim{clusterID: 2, entry: ea})
	m.setIP("cluster-b", shared, &ipClaim{clusterID: 3, entry: eb})

	m.DropCluster("cluster-a", 2)

	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.1.0.1", 1), mgHTTP("10.1.0.2", 1), mgHTTP("10.3.0.1", 3)},
		mgFEDNS:  {mgDNS("10.1.0.1", 1), mgDNS("10.1.0.2", 1), mgDNS("10.3.0.1", 3)},
	})
	mgWantIPCache(t, dp, map[netip.Prefix]datapath.IPCacheEntry{pb: eb, shared: eb})
	for _, s := range m.ServiceStatuses() {
		if s.Name == "api" {
			t.Errorf("shop/api, known only from the dropped cluster-a, still in the status: %+v", s)
		}
		if _, ok := s.Remote["cluster-a"]; ok {
			t.Errorf("status of %s/%s still counts cluster-a: %+v", s.Namespace, s.Name, s)
		}
	}

	dp.reset()
	m.DropCluster("cluster-a", 2) // nothing left of it
	if dp.writes() != 0 {
		t.Errorf("dropping an already dropped cluster wrote %d times", dp.writes())
	}
}

// --- merger: ipcache --------------------------------------------------------

func TestMergerIPCacheLowestClusterIDWins(t *testing.T) {
	p := netip.MustParsePrefix("10.5.0.1/32")
	ea := datapath.IPCacheEntry{Identity: 1000, TunnelEndpoint: netip.MustParseAddr("192.168.2.1"), ClusterID: 2}
	eb := datapath.IPCacheEntry{Identity: 2000, TunnelEndpoint: netip.MustParseAddr("192.168.3.1"), ClusterID: 3}

	for _, order := range [][]string{{"cluster-a", "cluster-b"}, {"cluster-b", "cluster-a"}} {
		t.Run(strings.Join(order, "-then-"), func(t *testing.T) {
			m, dp := mgNewMerger(t)
			claims := map[string]*ipClaim{
				"cluster-a": {clusterID: 2, entry: ea},
				"cluster-b": {clusterID: 3, entry: eb},
			}
			for _, c := range order {
				m.setIP(c, p, claims[c])
			}
			mgWantIPCache(t, dp, map[netip.Prefix]datapath.IPCacheEntry{p: ea})

			m.setIP("cluster-a", p, nil) // the winner goes away
			mgWantIPCache(t, dp, map[netip.Prefix]datapath.IPCacheEntry{p: eb})

			m.setIP("cluster-b", p, nil)
			mgWantIPCache(t, dp, map[netip.Prefix]datapath.IPCacheEntry{})
		})
	}
}

func TestMergerIPCacheLoserDeleteKeepsWinner(t *testing.T) {
	m, dp := mgNewMerger(t)
	p := netip.MustParsePrefix("fd00:5::1/128")
	ea := datapath.IPCacheEntry{Identity: 1000, ClusterID: 2}
	eb := datapath.IPCacheEntry{Identity: 2000, ClusterID: 3}
	m.setIP("cluster-a", p, &ipClaim{clusterID: 2, entry: ea})
	m.setIP("cluster-b", p, &ipClaim{clusterID: 3, entry: eb})
	dp.reset()
	m.setIP("cluster-b", p, nil)
	mgWantIPCache(t, dp, map[netip.Prefix]datapath.IPCacheEntry{p: ea})
	if dp.writes() != 0 {
		t.Errorf("deleting the losing claim wrote %d times; the datapath already held the winner", dp.writes())
	}
	// A changed claim of the winner is written.
	ea2 := datapath.IPCacheEntry{Identity: 1001, ClusterID: 2}
	m.setIP("cluster-a", p, &ipClaim{clusterID: 2, entry: ea2})
	mgWantIPCache(t, dp, map[netip.Prefix]datapath.IPCacheEntry{p: ea2})
}

// --- merger: idempotency ----------------------------------------------------

func TestMergerRecomputeWithoutChangeWritesNothing(t *testing.T) {
	m, dp := mgNewMerger(t)
	p := netip.MustParsePrefix("10.2.0.1/32")
	claim := datapath.IPCacheEntry{Identity: 1000, TunnelEndpoint: netip.MustParseAddr("192.168.2.1"), ClusterID: 2}

	m.SetLocal(mgLocalState(wire.AffinityNone, true))
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1", "10.2.0.2", "10.2.0.3"))
	m.SetRemoteService("cluster-b", mgWeb, mgRemote(mgClusterB, true, "10.3.0.1"))
	m.setIP("cluster-a", p, &ipClaim{clusterID: 2, entry: claim})
	if dp.upsertSvc == 0 || dp.upsertIP != 1 {
		t.Fatalf("initial sync: %d service and %d ipcache upserts, want some and 1", dp.upsertSvc, dp.upsertIP)
	}
	before, _ := dp.Services()

	steps := []struct {
		name string
		do   func()
	}{
		{"same local state again (new copy)", func() { m.SetLocal(mgLocalState(wire.AffinityNone, true)) }},
		{"same remote service again (new value, same backends)", func() {
			m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.3", "10.2.0.1", "10.2.0.2"))
		}},
		{"same ipcache claim again", func() {
			m.setIP("cluster-a", p, &ipClaim{clusterID: 2, entry: claim})
		}},
		{"delete of a service the cluster never had", func() { m.SetRemoteService("cluster-b", ServiceName{"shop", "nope"}, nil) }},
		{"delete of a claim the cluster never made", func() { m.setIP("cluster-b", p, nil) }},
		{"drop of an unknown cluster", func() { m.DropCluster("cluster-z", 26) }},
		{"change of a non-global service", func() {
			st := mgLocalState(wire.AffinityNone, true)
			st.Services[1].Ports[0].TargetPort = 9999
			m.SetLocal(st)
		}},
	}
	for _, s := range steps {
		dp.reset()
		s.do()
		if dp.writes() != 0 {
			t.Errorf("%s: %d service upserts, %d service deletes, %d ipcache upserts, %d ipcache deletes; want no write",
				s.name, dp.upsertSvc, dp.deleteSvc, dp.upsertIP, dp.deleteIP)
		}
	}
	mgWantServices(t, dp, before)

	// A change that affects only the http port rewrites only that frontend.
	dp.reset()
	m.SetRemoteService("cluster-b", mgWeb, NewRemoteService(mgClusterB, &wire.ClusterService{
		Cluster: "cluster-b", ClusterID: 3, Namespace: "shop", Name: "web", Shared: true,
		Backends: map[string]wire.PortConfiguration{
			"10.3.0.1": {"http": {Protocol: "TCP", Port: 8080}, "dns": {Protocol: "UDP", Port: 53}},
			"10.3.0.2": {"http": {Protocol: "TCP", Port: 8080}},
		},
	}))
	if dp.upsertSvc != 1 || dp.writes() != 1 {
		t.Errorf("a change to the http port's backends: %d service upserts, %d writes in all; want exactly 1 (the http frontend)",
			dp.upsertSvc, dp.writes())
	}
}

// --- merger: prune ----------------------------------------------------------

func TestMergerPrune(t *testing.T) {
	mem := datapath.NewMemory()
	// Left behind by a previous run.
	stalePrefix := netip.MustParsePrefix("10.7.0.0/24")
	staleFE := datapath.Frontend{Addr: netip.MustParseAddr("10.96.0.99"), Port: 443, Protocol: datapath.TCP}
	keptPrefix := netip.MustParsePrefix("10.2.0.1/32")
	oldEntry := datapath.IPCacheEntry{Identity: 1, ClusterID: 2}
	for _, err := range []error{
		mem.UpsertIPCache(stalePrefix, datapath.IPCacheEntry{Identity: 7, ClusterID: 4}),
		mem.UpsertIPCache(keptPrefix, oldEntry),
		mem.UpsertService(staleFE, []datapath.Backend{mgBE("10.7.0.1", 443, datapath.TCP, 4)}),
		mem.UpsertService(mgFEHTTP, []datapath.Backend{mgBE("10.7.0.2", 8080, datapath.TCP, 4)}),
	} {
		if err != nil {
			t.Fatalf("seeding the datapath: %v", err)
		}
	}

	m := newMerger(mem, "local", mgLocalID, slog.New(slog.DiscardHandler))
	m.trustAddresses = true
	m.SetLocal(mgLocalState(wire.AffinityNone, true))
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	entry := datapath.IPCacheEntry{Identity: 1000, TunnelEndpoint: netip.MustParseAddr("192.168.2.1"), ClusterID: 2}
	m.setIP("cluster-a", keptPrefix, &ipClaim{clusterID: 2, entry: entry})

	if err := m.Prune(mem); err != nil {
		t.Fatalf("prune: %v", err)
	}
	mgWantIPCache(t, mem, map[netip.Prefix]datapath.IPCacheEntry{keptPrefix: entry})
	mgWantServices(t, mem, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.1.0.1", 1), mgHTTP("10.1.0.2", 1), mgHTTP("10.2.0.1", 2)},
		mgFEDNS:  {mgDNS("10.1.0.1", 1), mgDNS("10.1.0.2", 1), mgDNS("10.2.0.1", 2)},
	})
	if m.writeErrs != 0 {
		t.Errorf("prune counted %d write errors (last %q)", m.writeErrs, m.lastErr)
	}
}

func TestMergerPruneKeepsZeroSlotService(t *testing.T) {
	mem := datapath.NewMemory()
	m := newMerger(mem, "local", mgLocalID, slog.New(slog.DiscardHandler))
	m.trustAddresses = true
	m.SetLocal(mgLocalState(wire.AffinityLocal, false)) // no backend anywhere
	if err := m.Prune(mem); err != nil {
		t.Fatalf("prune: %v", err)
	}
	mgWantServices(t, mem, map[datapath.Frontend][]datapath.Backend{mgFEHTTP: {}, mgFEDNS: {}})
}

// A ClusterIP written as an IPv4-mapped IPv6 address passes
// statesource.Validate; the datapath stores the frontend unmapped, so the
// merger must recognise it as its own when pruning.
func TestMergerPruneKeepsServiceWithV4MappedClusterIP(t *testing.T) {
	mem := datapath.NewMemory()
	m := newMerger(mem, "local", mgLocalID, slog.New(slog.DiscardHandler))
	m.trustAddresses = true
	st := mgLocalState(wire.AffinityNone, true)
	st.Services[0].ClusterIP = netip.MustParseAddr("::ffff:10.96.0.10")
	if err := st.Validate(); err != nil {
		t.Fatalf("state invalid: %v", err)
	}
	m.SetLocal(st)
	want := map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.1.0.1", 1), mgHTTP("10.1.0.2", 1)},
		mgFEDNS:  {mgDNS("10.1.0.1", 1), mgDNS("10.1.0.2", 1)},
	}
	mgWantServices(t, mem, want)
	if err := m.Prune(mem); err != nil {
		t.Fatalf("prune: %v", err)
	}
	mgWantServices(t, mem, want)
}

// --- serviceStatuses --------------------------------------------------------

func TestServiceStatusesCounts(t *testing.T) {
	m, _ := mgNewMerger(t)
	st := mgLocalState(wire.AffinityLocal, true)
	st.Endpoints[1].Ready = mgBool(false) // web-1 not ready
	m.SetLocal(st)
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	m.SetRemoteService("cluster-b", mgWeb, mgRemote(mgClusterB, true, "10.3.0.1", "10.3.0.2"))

	got := m.ServiceStatuses()
	want := []ServiceStatus{
		{
			Namespace: "shop", Name: "web", Frontend: mgFEDNS.String(), Affinity: wire.AffinityLocal,
			LocalHealthy: 1, LocalTotal: 2, Remote: map[string]int{"cluster-a": 1, "cluster-b": 2}, RemoteTotal: 3,
			Selected: 1, SelectedFrom: "local",
		},
		{
			Namespace: "shop", Name: "web", Frontend: mgFEHTTP.String(), Affinity: wire.AffinityLocal,
			LocalHealthy: 1, LocalTotal: 2, Remote: map[string]int{"cluster-a": 1, "cluster-b": 2}, RemoteTotal: 3,
			Selected: 1, SelectedFrom: "local",
		},
	}
	mgWantStatuses(t, got, want)

	// Without a healthy local backend, all remote ones are selected.
	m.SetLocal(mgLocalState(wire.AffinityLocal, false))
	for _, s := range m.ServiceStatuses() {
		if s.LocalHealthy != 0 || s.LocalTotal != 2 || s.Selected != 3 || s.SelectedFrom != "remote" || s.Warning != "" {
			t.Errorf("%s after local failure: healthy %d/%d, selected %d from %q, warning %q; want 0/2, 3 from remote, no warning",
				s.Frontend, s.LocalHealthy, s.LocalTotal, s.Selected, s.SelectedFrom, s.Warning)
		}
	}

	// Affinity none selects everything healthy.
	m.SetLocal(mgLocalState(wire.AffinityNone, true))
	for _, s := range m.ServiceStatuses() {
		if s.Affinity != wire.AffinityNone || s.Selected != 5 || s.SelectedFrom != "local+remote" {
			t.Errorf("%s with affinity none: affinity %q, selected %d from %q; want none, 5 from local+remote",
				s.Frontend, s.Affinity, s.Selected, s.SelectedFrom)
		}
	}
}

func TestServiceStatusesZeroSelectedWarning(t *testing.T) {
	m, dp := mgNewMerger(t)
	m.SetLocal(mgLocalState(wire.AffinityLocal, false)) // no healthy local, no remote
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, false, "10.2.0.1"))

	got := m.ServiceStatuses()
	if len(got) != 2 {
		t.Fatalf("got %d status lines, want 2 (one per port): %+v", len(got), got)
	}
	for _, s := range got {
		if s.Selected != 0 || s.SelectedFrom != "none" || s.LocalTotal != 2 || s.LocalHealthy != 0 || s.RemoteTotal != 0 {
			t.Errorf("%s: %+v; want 0 selected from none, 0/2 local, no remote", s.Frontend, s)
		}
		if !strings.Contains(s.Warning, "no backend selected") {
			t.Errorf("%s: warning %q, want it to say no backend is selected", s.Frontend, s.Warning)
		}
	}
	// The frontend is kept with zero slots rather than removed.
	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{mgFEHTTP: {}, mgFEDNS: {}})

	// A healthy backend clears the warning.
	m.SetRemoteService("cluster-b", mgWeb, mgRemote(mgClusterB, true, "10.3.0.1"))
	for _, s := range m.ServiceStatuses() {
		if s.Warning != "" || s.Selected != 1 {
			t.Errorf("%s with one remote backend: selected %d, warning %q; want 1 and none", s.Frontend, s.Selected, s.Warning)
		}
	}
}

func TestServiceStatusesSortedAndExcludeNonGlobal(t *testing.T) {
	m, _ := mgNewMerger(t)
	m.SetLocal(mgLocalState(wire.AffinityNone, true))
	m.SetRemoteService("cluster-a", ServiceName{"zoo", "api"}, mgRemote(mgClusterA, true, "10.2.0.1"))
	m.SetRemoteService("cluster-a", ServiceName{"alpha", "api"}, mgRemote(mgClusterA, true, "10.2.0.1"))

	var names []string
	for _, s := range m.ServiceStatuses() {
		names = append(names, fmt.Sprintf("%s/%s %s", s.Namespace, s.Name, s.Frontend))
	}
	want := []string{
		"alpha/api ",
		"shop/web " + mgFEDNS.String(),
		"shop/web " + mgFEHTTP.String(),
		"zoo/api ",
	}
	if !slices.Equal(names, want) {
		t.Errorf("status lines\n%q\nwant\n%q", names, want)
	}
}

func mgWantStatuses(t *testing.T, got, want []ServiceStatus) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d status lines, want %d:\n got %+v\nwant %+v", len(got), len(want), got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if !maps.Equal(g.Remote, w.Remote) {
			t.Errorf("line %d (%s): remote %v, want %v", i, g.Frontend, g.Remote, w.Remote)
		}
		// Without stale clusters every remote backend is healthy.
		wantHealthy := w.RemoteHealthy
		if wantHealthy == nil {
			wantHealthy = w.Remote
		}
		if len(wantHealthy) > 0 && !maps.Equal(g.RemoteHealthy, wantHealthy) {
			t.Errorf("line %d (%s): remote healthy %v, want %v", i, g.Frontend, g.RemoteHealthy, wantHealthy)
		}
		g.Remote, w.Remote, g.RemoteHealthy, w.RemoteHealthy = nil, nil, nil, nil
		if !reflect.DeepEqual(g, w) {
			t.Errorf("line %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
}

// The same ClusterIP, first written v4-mapped then plain, is one frontend in
// the datapath: the rewrite must not end with the frontend deleted.
func TestMergerClusterIPRespelledUnmappedKeepsService(t *testing.T) {
	m, dp := mgNewMerger(t)
	st := mgLocalState(wire.AffinityNone, true)
	st.Services[0].ClusterIP = netip.MustParseAddr("::ffff:10.96.0.10")
	m.SetLocal(st)
	m.SetLocal(mgLocalState(wire.AffinityNone, true)) // 10.96.0.10
	mgWantServices(t, dp, map[datapath.Frontend][]datapath.Backend{
		mgFEHTTP: {mgHTTP("10.1.0.1", 1), mgHTTP("10.1.0.2", 1)},
		mgFEDNS:  {mgDNS("10.1.0.1", 1), mgDNS("10.1.0.2", 1)},
	})
}

func TestMergerRecheckFlowsWhenAWrittenIdentityChanges(t *testing.T) {
	m, _ := mgNewMerger(t)
	rechecks := 0
	m.recheckFlows = func() error { rechecks++; return nil }
	p, q := netip.MustParsePrefix("10.5.0.1/32"), netip.MustParsePrefix("10.5.0.2/32")
	e := func(id uint32) *datapath.IPCacheEntry { return &datapath.IPCacheEntry{Identity: id, ClusterID: 2} }
	for _, step := range []struct {
		what    string
		updates []IPUpdate
		want    int
	}{
		{"new entries", []IPUpdate{{p, e(1000)}, {q, e(1000)}}, 0},
		{"the same again", []IPUpdate{{p, e(1000)}}, 0},
		{"an identity changes", []IPUpdate{{p, e(1001)}, {q, e(1000)}}, 1},
		{"an entry goes away", []IPUpdate{{q, nil}}, 2},
		{"a new entry", []IPUpdate{{q, e(1002)}}, 2},
	} {
		m.SetIPs(2, step.updates)
		if rechecks != step.want {
			t.Errorf("%s: %d rechecks, want %d", step.what, rechecks, step.want)
		}
	}
	m.DropCluster("cluster-b", 2)
	if rechecks != 3 {
		t.Errorf("drop cluster: %d rechecks, want 3 (once for the batch)", rechecks)
	}
}
