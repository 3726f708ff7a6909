package merge

import (
	"log/slog"
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/wire"
)

func ownPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func ownMerger(t *testing.T) (*Merger, *datapath.Memory) {
	t.Helper()
	mem := datapath.NewMemory()
	return newMerger(mem, "east", 1, slog.New(slog.DiscardHandler)), mem
}

func ownClaim(id uint16, identity uint32, p string) IPUpdate {
	return IPUpdate{Prefix: ownPrefix(p), Entry: &datapath.IPCacheEntry{Identity: identity, ClusterID: id}}
}

func ownWant(t *testing.T, mem *datapath.Memory, what string, want map[string]uint16) {
	t.Helper()
	got, err := mem.IPCache()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("%s: datapath holds %d entries %v, want %v", what, len(got), got, want)
	}
	for p, id := range want {
		e, ok := got[ownPrefix(p)]
		if !ok || e.ClusterID != id {
			t.Errorf("%s: %s = %+v (present %v), want cluster %d", what, p, e, ok, id)
		}
	}
}

// An entry reaches the datapath only inside a range its cluster's nodes
// own; it follows the node's arrival and departure.
func TestOwnershipEntriesFollowNodeRanges(t *testing.T) {
	m, mem := ownMerger(t)
	const west = 2
	m.SetIPs(west, []IPUpdate{ownClaim(west, 131073, "10.2.1.5/32")})
	ownWant(t, mem, "before west's node", map[string]uint16{})
	if n := m.NotInForce("west", west); n.IPCacheOutside != 1 {
		t.Errorf("not in force before the node: %+v, want 1 outside", n)
	}

	m.SetNodeRanges(west, nil, []netip.Prefix{ownPrefix("10.2.1.0/24"), ownPrefix("192.168.2.1/32")})
	ownWant(t, mem, "after west's node", map[string]uint16{"10.2.1.5/32": west})
	if n := m.NotInForce("west", west); n.Total() != 0 {
		t.Errorf("not in force after the node: %+v, want nothing", n)
	}

	// A prefix wider than the node's range, and an address outside it.
	m.SetIPs(west, []IPUpdate{ownClaim(west, 131073, "10.2.0.0/16"), ownClaim(west, 131073, "10.9.9.9/32")})
	ownWant(t, mem, "wide and foreign claims", map[string]uint16{"10.2.1.5/32": west})

	// The node restates its ranges (an update): nothing moves.
	m.SetNodeRanges(west, []netip.Prefix{ownPrefix("10.2.1.0/24")}, []netip.Prefix{ownPrefix("10.2.1.0/24")})
	ownWant(t, mem, "node restated", map[string]uint16{"10.2.1.5/32": west})

	m.SetNodeRanges(west, []netip.Prefix{ownPrefix("10.2.1.0/24"), ownPrefix("192.168.2.1/32")}, nil)
	ownWant(t, mem, "node gone", map[string]uint16{})
	if n := m.NotInForce("west", west); n.IPCacheOutside != 3 {
		t.Errorf("not in force after the node went: %+v, want 3 outside", n)
	}
}

// A peer cannot take over another peer's pods: not by publishing their
// addresses, not with a wide prefix, not by stating an overlapping range —
// whatever its cluster id.
func TestOwnershipPeerCannotTakeOverAnotherPeersAddresses(t *testing.T) {
	m, mem := ownMerger(t)
	const west, north = 2, 3 // west has the lower id
	m.SetNodeRanges(north, nil, []netip.Prefix{ownPrefix("10.3.1.0/24")})
	m.SetNodeRanges(west, nil, []netip.Prefix{ownPrefix("10.2.1.0/24")})
	m.SetIPs(north, []IPUpdate{ownClaim(north, 196609, "10.3.1.7/32")})

	m.SetIPs(west, []IPUpdate{ownClaim(west, 131073, "10.3.1.7/32"), ownClaim(west, 131073, "10.3.0.0/16")})
	ownWant(t, mem, "west claims north's address", map[string]uint16{"10.3.1.7/32": north})

	// West states a node whose pod CIDR covers north's, and one with
	// north's exact range: north claimed first and keeps it.
	m.SetNodeRanges(west, nil, []netip.Prefix{ownPrefix("10.3.0.0/16"), ownPrefix("10.3.1.0/24"), ownPrefix("10.3.1.7/32")})
	m.SetIPs(west, []IPUpdate{ownClaim(west, 131073, "10.3.1.7/32"), ownClaim(west, 131073, "10.3.1.8/32")})
	ownWant(t, mem, "west states overlapping ranges", map[string]uint16{"10.3.1.7/32": north})
	if n := m.NotInForce("west", west); n.IPCacheClaimed != 3 || n.IPCacheOutside != 0 {
		t.Errorf("west's entries not in force: %+v, want 3 claimed by another cluster (10.3.1.7, 10.3.1.8, 10.3.0.0/16 over north's range)", n)
	}
	// North's node restates its range: it keeps its place.
	m.SetNodeRanges(north, []netip.Prefix{ownPrefix("10.3.1.0/24")}, []netip.Prefix{ownPrefix("10.3.1.0/24")})
	ownWant(t, mem, "north's node updated", map[string]uint16{"10.3.1.7/32": north})

	// North's node goes: the range is west's now (it was claimed), and so
	// are west's entries in it. That is a handover, not a fight: it
	// happens only when the owner's range is gone.
	m.SetNodeRanges(north, []netip.Prefix{ownPrefix("10.3.1.0/24")}, nil)
	ownWant(t, mem, "north's node gone", map[string]uint16{"10.3.1.7/32": west, "10.3.1.8/32": west, "10.3.0.0/16": west})
}

// Service backends count only at addresses their cluster owns.
func TestOwnershipBackendsOutsideRangesAreNotSelected(t *testing.T) {
	m, mem := ownMerger(t)
	m.SetLocal(mgLocalState("remote", true))
	rs := mgRemote(mgClusterA, true, "10.2.0.1", "10.66.0.1")
	m.SetRemoteService("cluster-a", mgWeb, rs)
	backendsOf := func() map[netip.Addr]bool {
		svcs, err := mem.Services()
		if err != nil {
			t.Fatal(err)
		}
		out := map[netip.Addr]bool{}
		for _, b := range svcs[mgFEHTTP] {
			out[b.Addr] = true
		}
		return out
	}
	if got := backendsOf(); got[netip.MustParseAddr("10.2.0.1")] || got[netip.MustParseAddr("10.66.0.1")] {
		t.Errorf("backends before cluster-a's node: %v, want none of cluster-a's", got)
	}
	m.SetNodeRanges(uint16(mgClusterA.ID), nil, []netip.Prefix{ownPrefix("10.2.0.0/24")})
	got := backendsOf()
	if !got[netip.MustParseAddr("10.2.0.1")] || got[netip.MustParseAddr("10.66.0.1")] {
		t.Errorf("backends after cluster-a's node: %v, want 10.2.0.1 and not 10.66.0.1", got)
	}
	if n := m.NotInForce("cluster-a", uint16(mgClusterA.ID)); n.BackendsOutside != 2 { // two ports
		t.Errorf("not in force: %+v, want 2 backends outside (one address, two ports)", n)
	}
}

// WireGuard routes follow ownership: a node stating another cluster's pod
// CIDR (claimed first by that cluster) is handed on without it.
func TestOwnershipNodesCarryOnlyOwnedRanges(t *testing.T) {
	m, _ := ownMerger(t)
	north := &wire.Node{Name: "n1", Cluster: "north", ClusterID: 3,
		IPAddresses:   []wire.NodeAddress{{Type: wire.InternalIP, IP: netip.MustParseAddr("192.168.3.1")}},
		IPv4AllocCIDR: &wire.CIDR{Prefix: ownPrefix("10.3.1.0/24")}}
	evil := &wire.Node{Name: "evil", Cluster: "west", ClusterID: 2,
		IPAddresses:   []wire.NodeAddress{{Type: wire.InternalIP, IP: netip.MustParseAddr("192.168.3.1")}, {Type: wire.InternalIP, IP: netip.MustParseAddr("192.168.2.9")}},
		IPv4AllocCIDR: &wire.CIDR{Prefix: ownPrefix("10.3.1.0/24")}}
	m.SetNodeRanges(3, nil, NodeRanges(north))
	m.SetNodeRanges(2, nil, NodeRanges(evil))
	got := m.OwnedNodes([]*wire.Node{north, evil})
	if got[0].IPv4AllocCIDR == nil || len(got[0].IPAddresses) != 1 {
		t.Errorf("north's node lost what it owns: %+v", got[0])
	}
	if got[1].IPv4AllocCIDR != nil || len(got[1].IPAddresses) != 1 || got[1].IPAddresses[0].IP != netip.MustParseAddr("192.168.2.9") {
		t.Errorf("west's node keeps north's range or address: %+v", got[1])
	}
	if evil.IPv4AllocCIDR == nil {
		t.Error("the stored node was changed, not copied")
	}
}
