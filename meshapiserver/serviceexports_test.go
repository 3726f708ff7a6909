package meshapiserver

import (
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// An exported service's spec is published under serviceexports, and the
// publisher's check (the agents' decoder) accepts it; a service without
// export has none.
func TestServiceExportsPublished(t *testing.T) {
	c := wire.Cluster{Name: "west", ID: 2, MaxConnectedClusters: 255}
	st := &statesource.State{Services: []statesource.Service{
		{Namespace: "shop", Name: "checkout", ClusterIP: netip.MustParseAddr("10.0.0.7"), Ports: []statesource.ServicePort{{Name: "http", Port: 80}},
			Selector: map[string]string{"app": "checkout"}, Export: &statesource.Export{Created: time.Now()}},
		{Namespace: "shop", Name: "cart", ClusterIP: netip.MustParseAddr("10.0.0.8"), Ports: []statesource.ServicePort{{Name: "http", Port: 80}}},
	}}
	kv := desiredKV{}
	if err := addServiceExports(c, st, kv); err != nil {
		t.Fatal(err)
	}
	key := wire.ServiceExportKey("west", "shop", "checkout")
	if len(kv) != 1 || kv[key] == nil {
		t.Fatalf("published %v", kv)
	}
	if err := checkEntry(c, key, kv[key]); err != nil {
		t.Fatalf("the publisher refuses its own export spec: %v", err)
	}
}
