package meshapiserver

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// The cache is invisible: across a run of random changes (pods added,
// removed, relabelled, moved, readdressed; nodes readdressed), desired with
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
	eps := map[int]statesource.Endpoint{}
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
				eps[i] = statesource.Endpoint{Namespace: "shop", Pod: fmt.Sprint("p", i), Node: fmt.Sprint("n", 1+rng.IntN(2)),
					IP:     netip.AddrFrom4([4]byte{10, 2, 0, byte(rng.IntN(250) + 1)}),
					Labels: map[string]string{"app": fmt.Sprint("a", rng.IntN(4))}}
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
		got, _, err := desired(c, st, ids, cache)
		if err != nil {
			t.Fatal(err)
		}
		want, _, err := desired(c, st, ids, newEndpointCache())
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
