package meshapiserver

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// The cache is invisible: across a run of random changes (pods added,
// removed, relabelled, moved, readdressed, given another service account or
// namespace labels; nodes readdressed), desired with
// the long-lived cache equals desired computed from scratch.
func TestEndpointCacheEqualsFromScratch(t *testing.T) {
	c := wire.Cluster{Name: "west", ID: 2, MaxConnectedClusters: 255}
	ids, err := newIdentityAllocator(context.Background(), nil, c)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	nodes := []statesource.Node{
		{Name: "n1", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.1")}},
		{Name: "n2", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.2")}},
	}
	eps := map[int]*statesource.Endpoint{}
	cache := newEndpointCache()
	for round := 0; round < 300; round++ {
		for n := 0; n < 5; n++ {
			i := rng.IntN(60)
			switch rng.IntN(5) {
			case 0:
				delete(eps, i)
			case 1:
				if len(nodes[0].IPs) > 0 {
					nodes = append([]statesource.Node(nil), nodes...)
					nodes[rng.IntN(2)].IPs = []netip.Addr{netip.AddrFrom4([4]byte{192, 168, 2, byte(rng.IntN(250) + 1)})}
				}
			default:
				eps[i] = &statesource.Endpoint{Namespace: "shop", Pod: fmt.Sprint("p", i), Node: fmt.Sprint("n", 1+rng.IntN(2)),
					IP:     netip.AddrFrom4([4]byte{10, 2, 0, byte(rng.IntN(250) + 1)}),
					Labels: map[string]string{"app": fmt.Sprint("a", rng.IntN(4))}, ServiceAccount: fmt.Sprint("sa", rng.IntN(2)),
					NamespaceLabels: map[string]string{"team": fmt.Sprint("t", rng.IntN(2))}}
			}
		}
		st := &statesource.State{Nodes: nodes}
		seen := map[netip.Addr]bool{}
		for _, e := range eps {
			if !seen[e.IP] { // one pod per address, as a valid state has
				seen[e.IP] = true
				st.Endpoints = append(st.Endpoints, e)
			}
		}
		got, _, _, err := desired(c, st, ExportAll, ids, cache)
		if err != nil {
			t.Fatal(err)
		}
		want, _, _, err := desired(c, st, ExportAll, ids, newEndpointCache())
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("round %d: %d entries with the cache, %d from scratch", round, len(got), len(want))
		}
		for k, v := range want {
			if !bytes.Equal(got[k], v) {
				t.Fatalf("round %d: %s = %s with the cache, %s from scratch", round, k, got[k], v)
			}
		}
	}
}

// A pod whose service account or namespace labels change, and nothing else,
// gets the identity of its new labels: the cache does not keep the old one.
func TestEndpointCacheSeesServiceAccountAndNamespaceLabels(t *testing.T) {
	c := wire.Cluster{Name: "west", ID: 2, MaxConnectedClusters: 255}
	ids, err := newIdentityAllocator(context.Background(), nil, c)
	if err != nil {
		t.Fatal(err)
	}
	cache := newEndpointCache()
	node := statesource.Node{Name: "n1", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.1")}}
	ep := statesource.Endpoint{Namespace: "shop", Pod: "p", Node: "n1", IP: netip.MustParseAddr("10.2.0.1"),
		Labels: map[string]string{"app": "a"}, ServiceAccount: "one", NamespaceLabels: map[string]string{"team": "x"}}
	seen := map[string]bool{}
	for _, change := range []func(*statesource.Endpoint){
		func(*statesource.Endpoint) {},
		func(e *statesource.Endpoint) { e.ServiceAccount = "two" },
		func(e *statesource.Endpoint) { e.NamespaceLabels = map[string]string{"team": "y"} },
	} {
		change(&ep)
		cp := ep // a new endpoint each time, as a source delivers
		kv, _, _, err := desired(c, &statesource.State{Nodes: []statesource.Node{node}, Endpoints: []*statesource.Endpoint{&cp}}, ExportAll, ids, cache)
		if err != nil {
			t.Fatal(err)
		}
		want := ep.IdentityLabels(c.Name).String()
		found := false
		for k, v := range kv {
			if strings.HasPrefix(k, wire.IdentitiesPrefix+"/") {
				found = string(v) == want
			}
		}
		if !found || seen[want] {
			t.Fatalf("after %+v: published %v, want one identity %s (new)", ep, kv, want)
		}
		seen[want] = true
	}
}
