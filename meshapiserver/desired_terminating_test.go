package meshapiserver

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// A backend that serves but is not ready is published among the backends
// (Cilium keeps it active) and named in clustermesh.io/terminating; a ready
// one and one that no longer serves are not named there; the value decodes.
func TestClusterServiceTerminating(t *testing.T) {
	no, yes := false, true
	ep := func(pod, ip string, ready, serving *bool) *statesource.Endpoint {
		return &statesource.Endpoint{Namespace: "shop", Pod: pod, IP: netip.MustParseAddr(ip),
			Labels: map[string]string{"app": "web"}, Ready: ready, Serving: serving}
	}
	st := &statesource.State{
		Endpoints: []*statesource.Endpoint{
			ep("a", "10.1.0.1", nil, nil),
			ep("b", "10.1.0.2", &no, &yes), // terminating, serving
			ep("c", "10.1.0.3", &no, &no),  // gone from service
			ep("d", "10.1.0.4", &no, &yes), // terminating, serving
		},
		Services: []statesource.Service{{Namespace: "shop", Name: "web", Selector: map[string]string{"app": "web"},
			Ports: []statesource.ServicePort{{Name: "http", Port: 80}}}},
	}
	ix := statesource.NewSelectorIndex(st)
	scope := newExportScope(ExportAll, st, func() *statesource.SelectorIndex { return ix })
	c := wire.Cluster{Name: "east", ID: 1}

	cs := clusterService(c, ix, scope, &st.Services[0])
	if want := []string{"10.1.0.2", "10.1.0.4"}; !slices.Equal(cs.Terminating, want) || len(cs.Backends) != 3 {
		t.Errorf("terminating %q (want %q), %d backends (want 3)", cs.Terminating, want, len(cs.Backends))
	}
	v, err := wire.EncodeService(cs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wire.DecodeService(c, wire.ServiceKey("east", "shop", "web"), v); err != nil {
		t.Errorf("published value refused: %v", err)
	}

	st.Endpoints[1].Ready, st.Endpoints[3].Serving = nil, &no
	if cs := clusterService(c, ix, scope, &st.Services[0]); cs.Terminating != nil || len(cs.Backends) != 2 {
		t.Errorf("after ready again and stopped serving: terminating %q, %d backends; want none, 2", cs.Terminating, len(cs.Backends))
	}
}
