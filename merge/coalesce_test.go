package merge

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/wire"
)

// coMerger is a merger that coalesces service writes over window.
func coMerger(t *testing.T, window time.Duration) (*Merger, *mgCountingWriter) {
	t.Helper()
	dp := &mgCountingWriter{Memory: datapath.NewMemory()}
	m := New(Config{Datapath: dp, ClusterName: "local", ClusterID: mgLocalID, CoalesceServices: window,
		Logger: slog.New(slog.DiscardHandler)})
	m.trustAddresses = true
	t.Cleanup(m.Close)
	return m, dp
}

// wantWeb is what shop/web holds with the local backends and cluster-a's ips.
func wantWeb(ips ...string) map[datapath.Frontend][]datapath.Backend {
	http := []datapath.Backend{mgHTTP("10.1.0.1", 1), mgHTTP("10.1.0.2", 1)}
	dns := []datapath.Backend{mgDNS("10.1.0.1", 1), mgDNS("10.1.0.2", 1)}
	for _, ip := range ips {
		http, dns = append(http, mgHTTP(ip, 2)), append(dns, mgDNS(ip, 2))
	}
	return map[datapath.Frontend][]datapath.Backend{mgFEHTTP: http, mgFEDNS: dns}
}

// The first change of a service is written at once: coalescing adds no
// latency to a single change.
func TestCoalesceFirstChangeWrittenAtOnce(t *testing.T) {
	m, dp := coMerger(t, time.Hour)
	m.SetLocal(mgLocalState("", true)) // local changes are written at once
	mgWantServices(t, dp, wantWeb())
	delete(m.co.written, mgWeb) // as if its window had ended
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	mgWantServices(t, dp, wantWeb("10.2.0.1"))
	if n := m.PendingServices(); n != 0 {
		t.Errorf("%d services pending after a single change, want 0", n)
	}
}

// Changes within the window after a write are folded into one write;
// none is lost; Close writes what is pending.
func TestCoalesceLaterChangesFoldedIntoOneWrite(t *testing.T) {
	m, dp := coMerger(t, time.Hour) // the timer never fires in this test
	m.SetLocal(mgLocalState("", true))
	mgWantServices(t, dp, wantWeb())
	dp.reset()
	for i := range 20 {
		m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, fmt.Sprintf("10.2.0.%d", i+1)))
	}
	if dp.upsertSvc != 0 {
		t.Errorf("%d writes within the window, want 0 until it ends", dp.upsertSvc)
	}
	if n := m.PendingServices(); n != 1 {
		t.Errorf("%d services pending, want 1", n)
	}
	// Status shows the merged state at once, written or not.
	if st := m.ServiceStatuses(); len(st) == 0 || st[0].RemoteTotal != 1 {
		t.Errorf("status before the trailing write: %+v", st)
	}
	m.Close()
	mgWantServices(t, dp, wantWeb("10.2.0.20"))
	if dp.upsertSvc != 2 { // one per port
		t.Errorf("%d writes for 20 changes of 2 ports, want 2", dp.upsertSvc)
	}
	// After Close, every change is written at once.
	m.SetRemoteService("cluster-a", mgWeb, nil)
	mgWantServices(t, dp, wantWeb())
}

// The trailing write comes by itself, once, at the end of the window.
func TestCoalesceTrailingWrite(t *testing.T) {
	m, dp := coMerger(t, 20*time.Millisecond)
	var mu sync.Mutex
	told := 0
	m.onChange = func(ServiceName) { mu.Lock(); told++; mu.Unlock() }
	m.SetLocal(mgLocalState("", true))
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.2"))
	testenv.WaitFor(t, 10*time.Second, "the trailing write", func() bool { return m.PendingServices() == 0 })
	mgWantServices(t, dp, wantWeb("10.2.0.2"))
	mu.Lock()
	defer mu.Unlock()
	if told != 2 { // SetLocal's write and the trailing one
		t.Errorf("OnServiceChange told %d times, want 2", told)
	}
}

// Every pending change is written within a window of its arrival: the
// trailing write is due when the first pending service's window ends, and
// later changes, of any service, join it.
func TestCoalesceTrailingWriteDueWithinWindow(t *testing.T) {
	const window = time.Hour
	m, _ := coMerger(t, window)
	st := mgLocalState("", true)
	api := st.Services[0]
	api.Name, api.ClusterIP = "api", netip.MustParseAddr("10.96.0.30")
	st.Services = append(st.Services, api)
	m.SetLocal(st) // both written now: their windows are open
	first := time.Now()
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	due := m.co.due
	if m.co.timer == nil || due.After(first.Add(window)) {
		t.Fatalf("trailing write due %v after the change, want within %v", due.Sub(first), window)
	}
	m.SetRemoteService("cluster-b", ServiceName{"shop", "api"}, mgRemote(mgClusterB, true, "10.3.0.1"))
	if m.co.due != due || m.PendingServices() != 2 {
		t.Errorf("a second service's change moved the trailing write (%v → %v) or is not pending (%d)", due, m.co.due, m.PendingServices())
	}
}

// One service's window does not delay another's first change.
func TestCoalescePerService(t *testing.T) {
	m, dp := coMerger(t, time.Hour)
	st := mgLocalState("", true)
	api := st.Services[0]
	api.Name, api.ClusterIP = "api", netip.MustParseAddr("10.96.0.30")
	st.Services = append(st.Services, api)
	m.SetLocal(st)
	delete(m.co.written, ServiceName{"shop", "api"}) // its window ended; shop/web's did not
	dp.reset()
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	m.SetRemoteService("cluster-a", ServiceName{"shop", "api"}, mgRemote(mgClusterA, true, "10.2.0.1"))
	if dp.upsertSvc != 2 || m.PendingServices() != 1 {
		t.Errorf("%d writes, %d pending; want shop/api's 2 ports written at once and shop/web pending",
			dp.upsertSvc, m.PendingServices())
	}
}

// Close stops a pending trailing write and waits for one in flight, while
// other goroutines keep changing services; the last state is written.
func TestCoalesceCloseWaits(t *testing.T) {
	for range 20 {
		m, dp := coMerger(t, time.Millisecond)
		m.SetLocal(mgLocalState("", true))
		var wg sync.WaitGroup
		for g := range 2 {
			wg.Go(func() {
				for i := range 50 {
					m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, fmt.Sprintf("10.2.%d.%d", g, i+1)))
				}
			})
		}
		wg.Wait()
		m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.9.9"))
		m.Close()
		if m.co.timer != nil || m.PendingServices() != 0 {
			t.Fatalf("after Close: timer %v, %d pending", m.co.timer, m.PendingServices())
		}
		mgWantServices(t, dp, wantWeb("10.2.9.9"))
	}
}

// Prune keeps a frontend whose write was pending: it is written first.
func TestCoalescePruneWritesPending(t *testing.T) {
	m, dp := coMerger(t, time.Hour)
	m.SetLocal(mgLocalState("", true))
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	if err := m.Prune(dp.Memory); err != nil {
		t.Fatal(err)
	}
	mgWantServices(t, dp, wantWeb("10.2.0.1"))
}

// The per-cluster candidates (candidates.go) select what recomputing every
// backend from scratch selects, through random changes of services, node
// ranges and staleness.
func TestIncrementalCandidatesMatchFullRecompute(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for _, ann := range []map[string]string{
		{},
		{wire.AnnotationAffinity: "local"},
		{AnnotationFailoverOnStaleCluster: "true"},
		{wire.AnnotationAffinity: "local", AnnotationMinLocalBackends: "3"},
		{AnnotationClusterWeights: "c2=2,c3=1,local=1"},
	} {
		mem := datapath.NewMemory()
		m := newMerger(mem, "local", mgLocalID, slog.New(slog.DiscardHandler))
		st := mgLocalState("", true)
		for k, v := range ann {
			st.Services[0].Annotations[k] = v
		}
		m.SetLocal(st)
		for step := range 2000 {
			id := uint16(2 + rng.IntN(4))
			c := wire.Cluster{Name: fmt.Sprintf("c%d", id), ID: uint32(id), MaxConnectedClusters: wire.DefaultMaxConnectedClusters}
			rangeOf := func() netip.Prefix { // ranges of several clusters overlap
				return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(2 + rng.IntN(4)), byte(rng.IntN(2)), 0}), 24-rng.IntN(2)*8)
			}
			switch rng.IntN(6) {
			case 0, 1, 2:
				var ips []string
				for range rng.IntN(6) {
					ips = append(ips, fmt.Sprintf("10.%d.%d.%d", 2+rng.IntN(4), rng.IntN(2), 1+rng.IntN(5)))
				}
				rs := mgRemote(c, rng.IntN(8) > 0, ips...)
				if rng.IntN(8) == 0 {
					rs = nil
				}
				m.SetRemoteService(c.Name, mgWeb, rs)
			case 3:
				m.SetNodeRanges(id, nil, []netip.Prefix{rangeOf()})
			case 4:
				m.SetNodeRanges(id, []netip.Prefix{rangeOf()}, nil)
			case 5:
				m.SetStale(c.Name, rng.IntN(2) == 0)
			}
			if rng.IntN(50) == 0 {
				m.DropCluster(c.Name, id)
			}
			got, _ := mem.Services()
			want := fullRecompute(m)
			for fe, bs := range want {
				if !slices.Equal(got[fe], bs) {
					t.Fatalf("%v step %d: %s holds %v, recomputing from scratch selects %v", ann, step, fe, got[fe], bs)
				}
			}
		}
	}
}

// fullRecompute is the selection without per-cluster candidates: every
// remote backend checked and sorted again.
func fullRecompute(m *Merger) map[datapath.Frontend][]datapath.Backend {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[datapath.Frontend][]datapath.Backend{}
	for n, ls := range m.localSvcs {
		pol := parsePolicy(ls)
		views := m.portViews(ls)
		for _, p := range ls.Ports {
			proto, err := datapath.ParseProtocol(p.Proto())
			if err != nil {
				continue
			}
			v := views[0]
			views = views[1:]
			remote := map[string][]datapath.Backend{}
			if sr := m.remoteSvcs[n]; sr != nil {
				for cluster, e := range sr.byCluster {
					for _, b := range e.rs.backends[p.Name] {
						if b.Protocol == proto && m.admitsLocked(e.rs.clusterID, netip.PrefixFrom(b.Addr, b.Addr.BitLen())) &&
							!(pol.failoverOnStale && m.stale[cluster]) {
							remote[cluster] = append(remote[cluster], b)
						}
					}
				}
			}
			out[v.frontend], _ = pol.selectBackends(m.localName, v.local, remote)
		}
	}
	return out
}

// A remote that becomes ready (PruneCluster) is in the datapath: its
// pending changes are written; another remote's stay pending, so that a
// mesh connecting at once stays coalesced.
func TestCoalesceRemoteReadyWritesItsOwn(t *testing.T) {
	m, dp := coMerger(t, time.Hour)
	m.SetLocal(mgLocalState("", true))
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	if ips, bes := m.PruneCluster(uint16(mgClusterB.ID)); ips+bes != 0 || m.PendingServices() != 1 {
		t.Errorf("cluster-b ready: pruned %d entries, %d services pending; want 0 and 1", ips+bes, m.PendingServices())
	}
	mgWantServices(t, dp, wantWeb())
	m.PruneCluster(uint16(mgClusterA.ID))
	if n := m.PendingServices(); n != 0 {
		t.Errorf("cluster-a ready: %d services pending, want 0", n)
	}
	mgWantServices(t, dp, wantWeb("10.2.0.1"))
}

// A cluster's drop is written at once, pending or not.
func TestCoalesceDropWrittenAtOnce(t *testing.T) {
	m, dp := coMerger(t, time.Hour)
	m.SetLocal(mgLocalState("", true))
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	m.DropCluster("cluster-a", uint16(mgClusterA.ID))
	mgWantServices(t, dp, wantWeb())
	if n := m.PendingServices(); n != 0 {
		t.Errorf("%d services pending after the drop, want 0", n)
	}
}
