package merge

import (
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/wire"
)

// RemoteBackends gives each remote's backends within the ranges it owns,
// and OnServiceChange names the service on every change of them.
func TestRemoteBackendsOwnedAndTold(t *testing.T) {
	var told []ServiceName
	m := New(Config{Datapath: datapath.NewMemory(), ClusterName: "east", ClusterID: 1,
		OnServiceChange: func(n ServiceName) { told = append(told, n) }})
	web := ServiceName{"shop", "web"}
	west := wire.Cluster{Name: "west", ID: 2}
	svc := &wire.ClusterService{Cluster: "west", Namespace: "shop", Name: "web", Shared: true, Backends: map[string]wire.PortConfiguration{
		"10.2.1.5": {"http": {Protocol: "TCP", Port: 8080}},
		"10.9.9.9": {"http": {Protocol: "TCP", Port: 8080}},
	}}
	m.SetRemoteService("west", web, NewRemoteService(west, svc))
	if len(told) != 1 || told[0] != web {
		t.Errorf("told %v, want [%v]", told, web)
	}
	if got := m.RemoteBackends(web); len(got) != 1 || len(got[0].Ports["http"]) != 0 {
		t.Errorf("before west's node: %+v, want west with no backend", got)
	}
	m.SetNodeRanges(2, nil, []netip.Prefix{netip.MustParsePrefix("10.2.1.0/24")})
	got := m.RemoteBackends(web)
	if len(got) != 1 || got[0].Cluster != "west" || got[0].ClusterID != 2 || len(got[0].Ports["http"]) != 1 ||
		got[0].Ports["http"][0].Addr != netip.MustParseAddr("10.2.1.5") || got[0].Ports["http"][0].Port != 8080 {
		t.Errorf("after west's node: %+v, want 10.2.1.5:8080 only", got)
	}
	if len(told) < 2 {
		t.Errorf("the node's arrival did not tell the service: %v", told)
	}
	m.DropServices("west")
	if got := m.RemoteBackends(web); len(got) != 0 {
		t.Errorf("after dropping west's services: %+v", got)
	}
	if told[len(told)-1] != web {
		t.Errorf("dropping west's services told %v", told)
	}
}

// RemoteBackends carries the hostnames and zones a remote publishes, by
// backend address; a remote publishing none (an older apiserver) gives nil.
func TestRemoteBackendsTopology(t *testing.T) {
	m := New(Config{Datapath: datapath.NewMemory(), ClusterName: "east", ClusterID: 1})
	web := ServiceName{"shop", "web"}
	west := wire.Cluster{Name: "west", ID: 2}
	m.SetNodeRanges(2, nil, []netip.Prefix{netip.MustParsePrefix("10.2.1.0/24")})
	svc := &wire.ClusterService{Cluster: "west", Namespace: "shop", Name: "web", Shared: true,
		Backends: map[string]wire.PortConfiguration{
			"10.2.1.5": {"http": {Protocol: "TCP", Port: 8080}},
			"10.2.1.6": {"http": {Protocol: "TCP", Port: 8080}},
			"10.2.1.7": {"http": {Protocol: "TCP", Port: 8080}},
		},
		Hostnames: map[string]string{"10.2.1.5": "web-0", "10.9.9.9": "stray"},
		Zones: map[string]wire.BackendZone{
			"10.2.1.5": {Zone: "eu-1a", ForZones: []wire.ForZone{{Name: "eu-1a"}}},
			"10.2.1.6": {Zone: "eu-1b"},
		},
	}
	m.SetRemoteService("west", web, NewRemoteService(west, svc))
	got := m.RemoteBackends(web)
	if len(got) != 1 || len(got[0].Topology) != 2 {
		t.Fatalf("%+v, want west with the topology of 10.2.1.5 and 10.2.1.6", got)
	}
	top := got[0].Topology
	if a := top[netip.MustParseAddr("10.2.1.5")]; a.Hostname != "web-0" || a.Zone != "eu-1a" || len(a.ForZones) != 1 || a.ForZones[0] != "eu-1a" {
		t.Errorf("10.2.1.5: %+v", a)
	}
	if b := top[netip.MustParseAddr("10.2.1.6")]; b.Hostname != "" || b.Zone != "eu-1b" || b.ForZones != nil {
		t.Errorf("10.2.1.6: %+v", b)
	}
	svc.Hostnames, svc.Zones = nil, nil
	m.SetRemoteService("west", web, NewRemoteService(west, svc))
	if got := m.RemoteBackends(web); len(got) != 1 || got[0].Topology != nil || len(got[0].Ports["http"]) != 3 {
		t.Errorf("without hostnames and zones: %+v", got)
	}
}
