package agentsync

import (
	"net/netip"
	"slices"
	"testing"
)

// IPv4 prefixes (packed) and others (plain) hold, touch, age and leave
// alike.
func TestPrefixMap(t *testing.T) {
	m := newPrefixMap()
	ps := []netip.Prefix{netip.MustParsePrefix("10.2.1.5/32"), netip.MustParsePrefix("10.2.0.0/16"),
		netip.MustParsePrefix("fd00::5/128"), netip.MustParsePrefix("0.0.0.0/0")}
	for i, p := range ps {
		m.put(p, podRef(1)<<63|podRef(i+1), 1)
	}
	if m.len() != 4 || len(m.v4) != 3 {
		t.Fatalf("len %d (v4 %d), want 4 (3)", m.len(), len(m.v4))
	}
	for i, p := range ps {
		if r, ok := m.get(p); !ok || r != podRef(1)<<63|podRef(i+1) {
			t.Errorf("get(%s) = %x, %v", p, r, ok)
		}
	}
	if _, ok := m.get(netip.MustParsePrefix("10.2.1.5/31")); ok {
		t.Error("a prefix of another length is held")
	}
	m.touch(ps[0], 2)
	m.touch(ps[2], 2)
	old := m.older(2)
	slices.SortFunc(old, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	if want := []netip.Prefix{ps[3], ps[1]}; !slices.Equal(old, want) {
		t.Errorf("older(2) = %v, want %v", old, want)
	}
	m.rewriteRefs(func(r podRef) podRef { return r + 10 })
	if r, _ := m.get(ps[2]); r != podRef(1)<<63|13 {
		t.Errorf("rewritten ref %x", r)
	}
	for _, p := range ps {
		m.del(p)
	}
	if m.len() != 0 {
		t.Errorf("len %d after every delete", m.len())
	}
}

func FuzzPrefixKey4(f *testing.F) {
	f.Add([]byte{10, 2, 1, 5}, uint8(32))
	f.Add([]byte{0, 0, 0, 0}, uint8(0))
	f.Fuzz(func(t *testing.T, a []byte, bits uint8) {
		if len(a) != 4 {
			return
		}
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte(a)), int(bits))
		k, ok := key4Of(p)
		if ok != p.IsValid() {
			t.Fatalf("key4Of(%v) ok=%v", p, ok)
		}
		if ok && k.prefix() != p {
			t.Fatalf("%v packed and back is %v", p, k.prefix())
		}
	})
}
