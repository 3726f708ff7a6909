package merge

import (
	"maps"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/datapath"
)

// checkRoundTrip fails unless t gives back st for p, and lists it once.
func checkRoundTrip(t *testing.T, tab *ipTable, p netip.Prefix, st ipState) {
	t.Helper()
	tab.set(p, st)
	got, ok := tab.get(p)
	if !ok || got != st {
		t.Fatalf("%s: got %+v (present %v), want %+v", p, got, ok, st)
	}
	n := 0
	for q, s := range tab.all() {
		if q == p {
			n++
			if s != st {
				t.Fatalf("%s listed as %+v, want %+v", p, s, st)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%s listed %d times", p, n)
	}
}

// Every prefix and claim comes back as stored, whichever layout holds it.
func TestIPTableRoundTrip(t *testing.T) {
	tab := newIPTable()
	prefixes := []string{"10.2.0.1/32", "10.2.0.0/16", "0.0.0.0/0", "fd00::1/128", "fd00::/64", "::ffff:10.2.0.1/128", "::/0"}
	tunnels := []netip.Addr{netip.MustParseAddr("fe80::1%eth0"), {}, netip.MustParseAddr("192.168.0.1"),
		netip.MustParseAddr("fd00::9"), netip.MustParseAddr("::ffff:192.168.0.1")}
	for _, ps := range prefixes {
		p := netip.MustParsePrefix(ps)
		for _, tun := range tunnels {
			for _, written := range []bool{false, true} {
				checkRoundTrip(t, &tab, p, ipState{claim: datapath.IPCacheEntry{Identity: 70000, TunnelEndpoint: tun, ClusterID: 511}, written: written})
			}
		}
	}
	if tab.len() != len(prefixes) {
		t.Errorf("%d entries, want %d (a prefix moving between layouts must leave none behind)", tab.len(), len(prefixes))
	}
	if len(tab.plain) != 0 {
		t.Errorf("%d valid prefixes in the plain layout", len(tab.plain))
	}
	for _, ps := range prefixes {
		tab.del(netip.MustParsePrefix(ps))
	}
	if tab.len() != 0 || len(tab.tunnels.ids) != 0 {
		t.Errorf("%d entries and %d tunnel endpoints left after deleting every one", tab.len(), len(tab.tunnels.ids))
	}
}

// Through random sets and deletes the table holds what a plain map holds,
// and every interned tunnel endpoint is referenced exactly by the claims
// that carry it.
func TestIPTableMatchesPlainMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	tab, ref := newIPTable(), map[netip.Prefix]ipState{}
	prefix := func() netip.Prefix {
		if rng.IntN(4) == 0 {
			return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 15: byte(rng.IntN(30))}), 128)
		}
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 2, 0, byte(rng.IntN(60))}), 32-rng.IntN(2)*8)
	}
	tunnels := []netip.Addr{{}, netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("192.168.0.2"),
		netip.MustParseAddr("fd00::9"), netip.MustParseAddr("fe80::1%eth0")}
	for step := range 20000 {
		p := prefix()
		if rng.IntN(3) == 0 {
			tab.del(p)
			delete(ref, p)
		} else {
			st := ipState{claim: datapath.IPCacheEntry{Identity: uint32(rng.IntN(3)), TunnelEndpoint: tunnels[rng.IntN(len(tunnels))],
				ClusterID: uint16(rng.IntN(3))}, written: rng.IntN(2) == 0}
			tab.set(p, st)
			ref[p] = st
		}
		want, wantOK := ref[p]
		if got, ok := tab.get(p); ok != wantOK || got != want {
			t.Fatalf("step %d: %s = %+v (present %v), want %+v (present %v)", step, p, got, ok, want, wantOK)
		}
	}
	got := map[netip.Prefix]ipState{}
	refs := map[netip.Addr]uint32{}
	for p, st := range tab.all() {
		got[p] = st
		if st.claim.TunnelEndpoint.IsValid() {
			refs[st.claim.TunnelEndpoint]++
		}
	}
	if !maps.Equal(got, ref) {
		t.Fatalf("the table lists %d entries, the plain map holds %d, or they differ", len(got), len(ref))
	}
	for a, n := range refs {
		if id := tab.tunnels.ids[a]; id == 0 || tab.tunnels.refs[id-1] != n || tab.tunnels.addr(id) != a {
			t.Errorf("tunnel %s: id %d, %d references counted, %d claims carry it", a, id, tab.tunnels.refs[id-1], n)
		}
	}
	if len(tab.tunnels.ids) != len(refs) {
		t.Errorf("%d tunnel endpoints interned, %d in use", len(tab.tunnels.ids), len(refs))
	}
}

// FuzzIPTable: any address, length and claim round-trips.
func FuzzIPTable(f *testing.F) {
	f.Add([]byte{10, 2, 0, 1}, 32, uint32(70000), []byte{192, 168, 0, 1}, uint16(2), true)
	f.Add(make([]byte, 16), 64, uint32(1), make([]byte, 16), uint16(0), false)
	f.Add([]byte{}, 0, uint32(0), []byte{}, uint16(511), false)
	f.Fuzz(func(t *testing.T, addr []byte, bits int, identity uint32, tun []byte, cluster uint16, written bool) {
		a, ok := netip.AddrFromSlice(addr)
		if !ok {
			return
		}
		p := netip.PrefixFrom(a, bits)
		te, _ := netip.AddrFromSlice(tun)
		tab := newIPTable()
		checkRoundTrip(t, &tab, p, ipState{claim: datapath.IPCacheEntry{Identity: identity, TunnelEndpoint: te, ClusterID: cluster}, written: written})
		tab.del(p)
		if tab.len() != 0 {
			t.Fatalf("%s: %d entries left after its delete", p, tab.len())
		}
	})
}
