package k8smcs

import (
	"net/netip"
	"testing"
)

func TestCandidates(t *testing.T) {
	r := netip.MustParsePrefix("10.96.200.0/30") // .1 and .2 usable
	got := candidates(r, "shop/derived-x", map[netip.Addr]bool{}, 10)
	if len(got) != 2 {
		t.Fatalf("candidates %v", got)
	}
	for _, a := range got {
		if a == r.Addr() || a == netip.MustParseAddr("10.96.200.3") || !r.Contains(a) {
			t.Fatalf("candidate %s", a)
		}
	}
	used := map[netip.Addr]bool{got[0]: true}
	if again := candidates(r, "shop/derived-x", used, 10); len(again) != 1 || again[0] != got[1] {
		t.Fatalf("with %s used: %v", got[0], again)
	}
	v6 := candidates(netip.MustParsePrefix("fd00:10:96::/108"), "a/b", nil, 3)
	if len(v6) != 3 || !netip.MustParsePrefix("fd00:10:96::/108").Contains(v6[0]) {
		t.Fatalf("v6 %v", v6)
	}
	// Stable: the same key starts at the same address.
	if a, b := candidates(r, "k", nil, 1), candidates(r, "k", nil, 1); a[0] != b[0] {
		t.Fatal("unstable")
	}
}
