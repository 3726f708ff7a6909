package agentsync

import (
	"encoding/binary"
	"net/netip"
)

// prefixMap is an ipcacheStore's prefix → pod name map, each entry with its
// generation (mark-and-sweep): one per remote ipcache entry, the bulk of a
// remote's memory. A netip.Prefix key (32 bytes) and a podRef with its
// generation (16) cost a map slot of 48 bytes; an IPv4 prefix packs into
// two 32-bit words and the value into three, a slot of 20 (as
// merge/iptable.go packs the merger's). Other prefixes (IPv6) keep the
// plain layout.
type prefixMap struct {
	v4    map[prefix4Key]refGen
	other genMap[netip.Prefix, podRef]
}

// prefix4Key is an IPv4 prefix: its address and its bits. Two words, not a
// uint64, so that the map's slots are 4-byte aligned.
type prefix4Key [2]uint32

// refGen is a podRef split in two words, and its generation.
type refGen struct{ lo, hi, gen uint32 }

func packRef(r podRef, gen uint32) refGen { return refGen{uint32(r), uint32(r >> 32), gen} }

func (e refGen) ref() podRef { return podRef(e.hi)<<32 | podRef(e.lo) }

func newPrefixMap() prefixMap {
	return prefixMap{v4: map[prefix4Key]refGen{}, other: genMap[netip.Prefix, podRef]{}}
}

func key4Of(p netip.Prefix) (prefix4Key, bool) {
	if !p.IsValid() || !p.Addr().Is4() {
		return prefix4Key{}, false
	}
	a := p.Addr().As4()
	return prefix4Key{binary.BigEndian.Uint32(a[:]), uint32(p.Bits())}, true
}

func (k prefix4Key) prefix() netip.Prefix {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], k[0])
	return netip.PrefixFrom(netip.AddrFrom4(a), int(k[1]))
}

func (m prefixMap) put(p netip.Prefix, r podRef, gen uint32) {
	if k, ok := key4Of(p); ok {
		m.v4[k] = packRef(r, gen)
		return
	}
	m.other.put(p, r, gen)
}

// get returns p's pod name reference and whether p is held.
func (m prefixMap) get(p netip.Prefix) (podRef, bool) {
	if k, ok := key4Of(p); ok {
		e, has := m.v4[k]
		return e.ref(), has
	}
	e, has := m.other[p]
	return e.v, has
}

// touch moves a held prefix to gen.
func (m prefixMap) touch(p netip.Prefix, gen uint32) {
	if k, ok := key4Of(p); ok {
		if e, has := m.v4[k]; has {
			e.gen = gen
			m.v4[k] = e
		}
		return
	}
	m.other.touch(p, gen)
}

func (m prefixMap) del(p netip.Prefix) {
	if k, ok := key4Of(p); ok {
		delete(m.v4, k)
		return
	}
	delete(m.other, p)
}

func (m prefixMap) len() int { return len(m.v4) + len(m.other) }

// older returns the prefixes last seen before gen.
func (m prefixMap) older(gen uint32) []netip.Prefix {
	out := m.other.older(gen)
	for k, e := range m.v4 {
		if e.gen < gen {
			out = append(out, k.prefix())
		}
	}
	return out
}

// rewriteRefs replaces every entry's reference r with f(r) (a compaction
// of the names' arena).
func (m prefixMap) rewriteRefs(f func(podRef) podRef) {
	for k, e := range m.v4 {
		m.v4[k] = packRef(f(e.ref()), e.gen)
	}
	for p, e := range m.other {
		e.v = f(e.v)
		m.other[p] = e
	}
}
