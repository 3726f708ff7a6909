package localmesh

import (
	"net/netip"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/clustermesh/clustermesh/internal/podnet"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/meshapiserver"
	"github.com/clustermesh/clustermesh/statesource"
)

// TestExportModesEndToEnd runs east exporting everything, west only what
// backs its global services and north only what opted in (its frontend):
// east's agent imports exactly that, reports it in its status, and serves
// shop/checkout with west's backends alone once its own are not ready.
func TestExportModesEndToEnd(t *testing.T) {
	modes := map[string]meshapiserver.ExportMode{"east": meshapiserver.ExportAll,
		"west": meshapiserver.ExportGlobalServices, "north": meshapiserver.ExportOptIn}
	var specs []ClusterSpec
	for i, n := range names {
		st := SampleState(i + 1)
		if n == "north" {
			for j := range st.Endpoints {
				if st.Endpoints[j].Pod == "frontend-1" {
					st.Endpoints[j].Labels = map[string]string{"app": "frontend", meshapiserver.SyncLabel: "true"}
				}
			}
		}
		specs = append(specs, ClusterSpec{Name: n, ID: uint32(i + 1), State: st})
	}
	m := startMeshWith(t, Options{Clusters: specs,
		APIServer: func(c *meshapiserver.Config) { c.ExportMode = modes[c.ClusterName] }})

	for name, held := range map[string]int{"east": 0, "west": 1, "north": 3} {
		s := m.Cluster(name).APIServer().Status()
		if s.ExportMode != modes[name] || s.EndpointsNotExported != held {
			t.Errorf("%s's apiserver: export mode %q, %d endpoints not exported; want %q, %d",
				name, s.ExportMode, s.EndpointsNotExported, modes[name], held)
		}
	}
	// What each agent imports: endpoints, identities and services.
	want := map[string][3]int{"east": {4, 2, 1}, "west": {3, 1, 1}, "north": {1, 1, 1}}
	testenv.WaitFor(t, wait, "every agent imports what each cluster exports", func() bool {
		for _, c := range m.Clusters {
			for _, peer := range m.Clusters {
				r := remoteStatus(c.Agents[0], peer.Name)
				if peer != c && (!r.Ready || r.Nodes != 2 || [3]int{r.Endpoints, r.Identities, r.Services} != want[peer.Name]) {
					return false
				}
			}
		}
		return true
	})
	ipc, err := m.Cluster("east").Agents[0].Datapath.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"10.2.1.12", "10.2.2.11", "10.2.2.13", "10.3.1.100"} {
		if _, ok := ipc[netip.PrefixFrom(netip.MustParseAddr(p), 32)]; !ok {
			t.Errorf("east's ipcache has no %s, an exported endpoint", p)
		}
	}
	for _, p := range []string{"10.2.1.100", "10.3.1.12", "10.3.2.11"} {
		if e, ok := ipc[netip.PrefixFrom(netip.MustParseAddr(p), 32)]; ok {
			t.Errorf("east's ipcache has %s (%+v), an endpoint its cluster does not export", p, e)
		}
	}

	// East's checkouts fail: the service fails over to the remote backends
	// exported, west's three; north's checkouts are not exported.
	east := m.Cluster("east")
	st := SampleState(1)
	SetReady(st, "checkout", false)
	if err := east.WriteState(st); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, "east's checkout served by west's 3 backends alone", func() bool {
		got := checkoutBackends(t, east.Agents[0])
		return len(got) == 1 && got[2] == 3
	})
}

// scopedIngress lets east's checkout pods accept TCP 8080 from the
// frontends of east, west and north, and from west's checkouts.
const scopedIngress = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: checkout-scoped, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: checkout}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend}
      matchExpressions:
      - {key: io.cilium.k8s.policy.cluster, operator: In, values: [east, west, north]}
    - matchLabels: {app: checkout, io.cilium.k8s.policy.cluster: west}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
`

// Policy holds for what a peer imports, and cannot select what it does
// not: west exports what backs its global services (its checkouts, not its
// frontend), north what opted in (its frontend). East's policy allows the
// frontends of all three and west's checkouts: on real packets north's
// frontend and west's checkout get through, west's frontend (unknown to
// east: world) does not.
//
// East itself exports only what backs its global services too, yet its
// own agent, reading its apiserver's local view, knows east's frontend
// (which backs none): its policy allows it on real packets, while a peer
// (west) has no entry for it.
func TestExportModesPolicyOnRealPackets(t *testing.T) {
	modes := map[string]meshapiserver.ExportMode{"east": meshapiserver.ExportGlobalServices,
		"west": meshapiserver.ExportGlobalServices, "north": meshapiserver.ExportOptIn}
	e := startPodEnv(t, podEnvOptions{ids: map[string]uint32{"east": 1, "west": 2, "north": 3}, policy: scopedIngress,
		state: func(name string, st *statesource.State) {
			for j := range st.Endpoints {
				if name == "north" && st.Endpoints[j].Pod == "frontend-1" {
					st.Endpoints[j].Labels = map[string]string{"app": "frontend", meshapiserver.SyncLabel: "true"}
				}
			}
		},
		apiserver: func(c *meshapiserver.Config) { c.ExportMode = modes[c.ClusterName] }})
	checkout := netip.AddrPortFrom(netip.MustParseAddr("10.1.1.12"), 8080)
	for _, from := range []string{"north/frontend-1", "west/checkout-1"} {
		testenv.WaitFor(t, wait, from+" (exported) allowed to east's checkout", func() bool {
			return connect(e.pods[from], checkout, 200*time.Millisecond) == nil
		})
	}
	if err := connect(e.pods["west/frontend-1"], checkout, 300*time.Millisecond); err == nil {
		t.Fatal("west/frontend-1, not exported, connected to east's checkout: want dropped as world")
	}
	d := e.readDrops(t, 1)[0]
	if d.GetDropReasonDesc() != flowpb.DropReason_POLICY_DENIED || d.IP.Source != "10.2.1.100" ||
		d.Source.Identity != 2 || d.Source.ClusterName != "" || d.Source.PodName != "" {
		t.Errorf("drop event %+v: want policy-denied from world (identity 2, no cluster or pod) at 10.2.1.100", d)
	}
	checkOwnClusterSeesItsHeldBackPods(t, e.mesh, e.pods["east/frontend-1"], checkout)
}

// checkOwnClusterSeesItsHeldBackPods: east, exporting only what backs its
// global services, holds its frontend back from peers (west's agent has
// no entry for it, and imports only the checkouts), while east's own
// agent reads it, with its identity, from the apiserver's local view and
// lets it through to checkout (the policy allows east's frontends).
func checkOwnClusterSeesItsHeldBackPods(t *testing.T, m *Mesh, frontend *podnet.Pod, checkout netip.AddrPort) {
	t.Helper()
	fe := netip.PrefixFrom(frontend.IP, 32)
	east := m.Cluster("east")
	if s := east.APIServer().Status(); s.EndpointsNotExported == 0 || s.LocalViewEntries == 0 {
		t.Errorf("east's apiserver: %d endpoints not exported, %d entries in the local view; want some of each", s.EndpointsNotExported, s.LocalViewEntries)
	}
	testenv.WaitFor(t, wait, "east's own agent reading the local view, with east's frontend", func() bool {
		st := east.Agents[0].Sync.Status()
		ipc, err := east.Agents[0].Datapath.IPCache()
		_, known := ipc[fe]
		return err == nil && known && st.Local != nil && st.Local.LocalView && st.Local.Ready
	})
	testenv.WaitFor(t, wait, "east/frontend-1 (held back from peers) allowed to east's checkout by east's own policy", func() bool {
		return connect(frontend, checkout, 200*time.Millisecond) == nil
	})
	west := m.Cluster("west").Agents[0]
	testenv.WaitFor(t, wait, "west importing east's exported endpoints", func() bool {
		r := remoteStatus(west, "east")
		return r.Ready && r.Endpoints > 0 && !r.LocalView
	})
	ipc, err := west.Datapath.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := ipc[fe]; ok {
		t.Errorf("west's agent has east's frontend %s (%+v), which east holds back: want unknown (world)", fe, e)
	}
}
