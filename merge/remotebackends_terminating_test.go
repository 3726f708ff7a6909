package merge

import (
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/wire"
)

// A backend the remote names terminating is carried as such in Topology and
// stays selected (it still serves, as in Cilium); a remote naming none and
// publishing no zones or hostnames gives nil Topology.
func TestRemoteBackendsTerminating(t *testing.T) {
	m := New(Config{Datapath: datapath.NewMemory(), ClusterName: "east", ClusterID: 1})
	web := ServiceName{"shop", "web"}
	west := wire.Cluster{Name: "west", ID: 2}
	m.SetNodeRanges(2, nil, []netip.Prefix{netip.MustParsePrefix("10.2.1.0/24")})
	svc := &wire.ClusterService{Cluster: "west", Namespace: "shop", Name: "web", Shared: true,
		Backends: map[string]wire.PortConfiguration{
			"10.2.1.5": {"http": {Protocol: "TCP", Port: 8080}},
			"10.2.1.6": {"http": {Protocol: "TCP", Port: 8080}},
		},
		Zones:       map[string]wire.BackendZone{"10.2.1.5": {Zone: "eu-1a"}},
		Terminating: []string{"10.2.1.6"},
	}
	m.SetRemoteService("west", web, NewRemoteService(west, svc))
	got := m.RemoteBackends(web)
	if len(got) != 1 || len(got[0].Ports["http"]) != 2 {
		t.Fatalf("%+v, want west with both backends selected", got)
	}
	top := got[0].Topology
	if a := top[netip.MustParseAddr("10.2.1.5")]; a.Terminating || a.Zone != "eu-1a" {
		t.Errorf("10.2.1.5: %+v, want zone eu-1a, not terminating", a)
	}
	if b, ok := top[netip.MustParseAddr("10.2.1.6")]; !ok || !b.Terminating || b.Zone != "" {
		t.Errorf("10.2.1.6: %+v (present %v), want terminating", b, ok)
	}

	svc.Zones = nil
	m.SetRemoteService("west", web, NewRemoteService(west, svc))
	if got := m.RemoteBackends(web); len(got) != 1 || len(got[0].Topology) != 1 || !got[0].Topology[netip.MustParseAddr("10.2.1.6")].Terminating {
		t.Errorf("terminating only: %+v", got)
	}
	svc.Terminating = nil
	m.SetRemoteService("west", web, NewRemoteService(west, svc))
	if got := m.RemoteBackends(web); len(got) != 1 || got[0].Topology != nil || len(got[0].Ports["http"]) != 2 {
		t.Errorf("none terminating: %+v", got)
	}
}
