package meshapiserver

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// A backend's zone, hint zones and hostname are published in Cilium's
// ClusterService fields; a backend without them adds nothing, and a
// service without any keeps the fields out of its JSON (as before).
func TestClusterServiceTopology(t *testing.T) {
	no := false
	st := &statesource.State{
		Endpoints: []*statesource.Endpoint{
			{Namespace: "shop", Pod: "a", IP: netip.MustParseAddr("10.1.0.1"), Labels: map[string]string{"app": "web"},
				Zone: "eu-1a", ForZones: []string{"eu-1a", "eu-1b"}, Hostname: "a"},
			{Namespace: "shop", Pod: "b", IP: netip.MustParseAddr("10.1.0.2"), Labels: map[string]string{"app": "web"},
				Zone: "eu-1b", Ready: &no, Serving: new(true)}, // terminating, serving
			{Namespace: "shop", Pod: "c", IP: netip.MustParseAddr("10.1.0.3"), Labels: map[string]string{"app": "web"}},
			{Namespace: "shop", Pod: "d", IP: netip.MustParseAddr("10.1.0.4"), Labels: map[string]string{"app": "db"}, Zone: "eu-1a"},
		},
		Services: []statesource.Service{
			{Namespace: "shop", Name: "web", Selector: map[string]string{"app": "web"}, Ports: []statesource.ServicePort{{Name: "http", Port: 80}}},
			{Namespace: "shop", Name: "db", Selector: map[string]string{"app": "db"}, Ports: []statesource.ServicePort{{Name: "sql", Port: 5432}}},
		},
	}
	ix := statesource.NewSelectorIndex(st)
	scope := newExportScope(ExportAll, st, func() *statesource.SelectorIndex { return ix })
	c := wire.Cluster{Name: "east", ID: 1}

	cs := clusterService(c, ix, scope, &st.Services[0])
	want := `{"10.1.0.1":{"zone":"eu-1a","forZones":[{"name":"eu-1a"},{"name":"eu-1b"}]},"10.1.0.2":{"zone":"eu-1b"}}`
	if got, _ := json.Marshal(cs.Zones); string(got) != want {
		t.Errorf("zones %s, want %s", got, want)
	}
	if len(cs.Hostnames) != 1 || cs.Hostnames["10.1.0.1"] != "a" || len(cs.Backends) != 3 {
		t.Errorf("hostnames %v, %d backends", cs.Hostnames, len(cs.Backends))
	}

	st.Endpoints[3].Zone = ""
	raw, err := wire.EncodeService(clusterService(c, ix, scope, &st.Services[1]))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["zones"]; ok {
		t.Errorf("a service without zones publishes them: %s", raw)
	}
	if _, ok := m["hostnames"]; ok {
		t.Errorf("a service without hostnames publishes them: %s", raw)
	}
}
