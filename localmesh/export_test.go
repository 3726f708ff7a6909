package localmesh

import (
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/meshapiserver"
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
