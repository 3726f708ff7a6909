package merge

import (
	"encoding/binary"
	"iter"
	"net/netip"

	"github.com/clustermesh/clustermesh/datapath"
)

// ipTable holds the winning claim of every prefix: one entry per remote
// ipcache entry, the bulk of the merger's memory. A netip.Prefix key (32
// bytes) and an ipState value (48) cost a map slot of 80 bytes; an IPv4
// prefix packs into 8 bytes and a claim into 12 (its tunnel endpoint, one
// of a few thousand nodes, interned), a slot of 24. IPv6 prefixes take a
// 24-byte key. A prefix that packs into neither (invalid) keeps the plain
// layout.
type ipTable struct {
	v4      map[uint64]ipVal // address << 8 | bits
	v6      map[ip6Key]ipVal
	plain   map[netip.Prefix]ipState
	tunnels tunnelTable
}

type ip6Key struct {
	hi, lo uint64
	bits   uint8
}

// ipVal is an ipState packed, its tunnel endpoint interned.
type ipVal struct {
	identity uint32
	tunnel   tunnelID
	cluster  uint16
	written  bool
}

func newIPTable() ipTable {
	return ipTable{v4: map[uint64]ipVal{}, v6: map[ip6Key]ipVal{}, plain: map[netip.Prefix]ipState{},
		tunnels: tunnelTable{ids: map[netip.Addr]tunnelID{}}}
}

// pack packs st, taking a reference on its tunnel endpoint.
func (t *ipTable) pack(st ipState) ipVal {
	return ipVal{identity: st.claim.Identity, tunnel: t.tunnels.ref(st.claim.TunnelEndpoint),
		cluster: st.claim.ClusterID, written: st.written}
}

func (t *ipTable) state(v ipVal) ipState {
	return ipState{claim: datapath.IPCacheEntry{Identity: v.identity, TunnelEndpoint: t.tunnels.addr(v.tunnel),
		ClusterID: v.cluster}, written: v.written}
}

// key4 packs an IPv4 prefix; ok is false for any other.
func key4(p netip.Prefix) (uint64, bool) {
	if !p.IsValid() || !p.Addr().Is4() {
		return 0, false
	}
	a := p.Addr().As4()
	return uint64(binary.BigEndian.Uint32(a[:]))<<8 | uint64(p.Bits()), true
}

// key6 packs an IPv6 prefix (an IPv4-mapped one included); ok is false
// for any other.
func key6(p netip.Prefix) (ip6Key, bool) {
	if !p.IsValid() || !p.Addr().Is6() || p.Addr().Zone() != "" {
		return ip6Key{}, false
	}
	a := p.Addr().As16()
	return ip6Key{hi: binary.BigEndian.Uint64(a[:8]), lo: binary.BigEndian.Uint64(a[8:]), bits: uint8(p.Bits())}, true
}

func (k ip6Key) prefix() netip.Prefix {
	var a [16]byte
	binary.BigEndian.PutUint64(a[:8], k.hi)
	binary.BigEndian.PutUint64(a[8:], k.lo)
	return netip.PrefixFrom(netip.AddrFrom16(a), int(k.bits))
}

func prefix4(k uint64) netip.Prefix {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], uint32(k>>8))
	return netip.PrefixFrom(netip.AddrFrom4(a), int(k&0xff))
}

func (t *ipTable) get(p netip.Prefix) (ipState, bool) {
	if k, ok := key4(p); ok {
		v, has := t.v4[k]
		return t.state(v), has
	}
	if k, ok := key6(p); ok {
		v, has := t.v6[k]
		return t.state(v), has
	}
	st, has := t.plain[p]
	return st, has
}

func (t *ipTable) has(p netip.Prefix) bool {
	_, ok := t.get(p)
	return ok
}

func (t *ipTable) set(p netip.Prefix, st ipState) {
	if k, ok := key4(p); ok {
		v := t.pack(st) // referenced before the old one is released: it may be the same
		if old, has := t.v4[k]; has {
			t.tunnels.unref(old.tunnel)
		}
		t.v4[k] = v
		return
	}
	if k, ok := key6(p); ok {
		v := t.pack(st)
		if old, has := t.v6[k]; has {
			t.tunnels.unref(old.tunnel)
		}
		t.v6[k] = v
		return
	}
	t.plain[p] = st
}

func (t *ipTable) del(p netip.Prefix) {
	if k, ok := key4(p); ok {
		if old, has := t.v4[k]; has {
			t.tunnels.unref(old.tunnel)
			delete(t.v4, k)
		}
		return
	}
	if k, ok := key6(p); ok {
		if old, has := t.v6[k]; has {
			t.tunnels.unref(old.tunnel)
			delete(t.v6, k)
		}
		return
	}
	delete(t.plain, p)
}

func (t *ipTable) len() int { return len(t.v4) + len(t.v6) + len(t.plain) }

// all yields every prefix and its claim; the loop may set and delete.
func (t *ipTable) all() iter.Seq2[netip.Prefix, ipState] {
	return func(yield func(netip.Prefix, ipState) bool) {
		for k, v := range t.v4 {
			if !yield(prefix4(k), t.state(v)) {
				return
			}
		}
		for k, v := range t.v6 {
			if !yield(k.prefix(), t.state(v)) {
				return
			}
		}
		for p, st := range t.plain {
			if !yield(p, st) {
				return
			}
		}
	}
}

// tunnelID is an interned tunnel endpoint; 0 is none (the invalid address).
type tunnelID uint32

// tunnelTable interns the claims' tunnel endpoints, counting references:
// an id is reused once no claim refers to it.
type tunnelTable struct {
	ids   map[netip.Addr]tunnelID
	addrs []netip.Addr // by id − 1
	refs  []uint32     // by id − 1
	free  []tunnelID
}

func (tt *tunnelTable) ref(a netip.Addr) tunnelID {
	if !a.IsValid() {
		return 0
	}
	id, ok := tt.ids[a]
	if !ok {
		if n := len(tt.free); n > 0 {
			id, tt.free = tt.free[n-1], tt.free[:n-1]
			tt.addrs[id-1] = a
		} else {
			tt.addrs, tt.refs = append(tt.addrs, a), append(tt.refs, 0)
			id = tunnelID(len(tt.addrs))
		}
		tt.ids[a] = id
	}
	tt.refs[id-1]++
	return id
}

func (tt *tunnelTable) unref(id tunnelID) {
	if id == 0 {
		return
	}
	if tt.refs[id-1]--; tt.refs[id-1] == 0 {
		delete(tt.ids, tt.addrs[id-1])
		tt.addrs[id-1] = netip.Addr{}
		tt.free = append(tt.free, id)
	}
}

func (tt *tunnelTable) addr(id tunnelID) netip.Addr {
	if id == 0 {
		return netip.Addr{}
	}
	return tt.addrs[id-1]
}
