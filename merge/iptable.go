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
// prefix packs into 8 bytes and a claim into 24, a slot of 32. IPv6
// prefixes take a 24-byte key. A claim whose tunnel endpoint carries a
// zone (never seen in practice) keeps the plain layout.
type ipTable struct {
	v4    map[uint64]ipVal // address << 8 | bits
	v6    map[ip6Key]ipVal
	plain map[netip.Prefix]ipState
}

type ip6Key struct {
	hi, lo uint64
	bits   uint8
}

// ipVal is an ipState packed: the tunnel endpoint's 16 bytes and its kind.
type ipVal struct {
	identity uint32
	tunnel   [16]byte
	cluster  uint16
	tunKind  uint8 // tunNone, tunV4 or tunV6
	written  bool
}

const (
	tunNone = iota
	tunV4
	tunV6
)

func newIPTable() ipTable {
	return ipTable{v4: map[uint64]ipVal{}, v6: map[ip6Key]ipVal{}, plain: map[netip.Prefix]ipState{}}
}

func packState(st ipState) (ipVal, bool) {
	v := ipVal{identity: st.claim.Identity, cluster: st.claim.ClusterID, written: st.written}
	switch t := st.claim.TunnelEndpoint; {
	case !t.IsValid():
		v.tunKind = tunNone
	case t.Zone() != "":
		return ipVal{}, false
	case t.Is4():
		v.tunKind = tunV4
		a := t.As4()
		copy(v.tunnel[:], a[:])
	default:
		v.tunKind, v.tunnel = tunV6, t.As16()
	}
	return v, true
}

func (v ipVal) state() ipState {
	st := ipState{claim: datapath.IPCacheEntry{Identity: v.identity, ClusterID: v.cluster}, written: v.written}
	switch v.tunKind {
	case tunV4:
		st.claim.TunnelEndpoint = netip.AddrFrom4([4]byte(v.tunnel[:4]))
	case tunV6:
		st.claim.TunnelEndpoint = netip.AddrFrom16(v.tunnel)
	}
	return st
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
		if has {
			return v.state(), true
		}
	} else if k, ok := key6(p); ok {
		v, has := t.v6[k]
		if has {
			return v.state(), true
		}
	}
	st, has := t.plain[p]
	return st, has
}

func (t *ipTable) has(p netip.Prefix) bool {
	_, ok := t.get(p)
	return ok
}

func (t *ipTable) set(p netip.Prefix, st ipState) {
	v, packed := packState(st)
	if packed {
		if k, ok := key4(p); ok {
			delete(t.plain, p)
			t.v4[k] = v
			return
		}
		if k, ok := key6(p); ok {
			delete(t.plain, p)
			t.v6[k] = v
			return
		}
	}
	t.del(p)
	t.plain[p] = st
}

func (t *ipTable) del(p netip.Prefix) {
	if k, ok := key4(p); ok {
		delete(t.v4, k)
	} else if k, ok := key6(p); ok {
		delete(t.v6, k)
	}
	delete(t.plain, p)
}

func (t *ipTable) len() int { return len(t.v4) + len(t.v6) + len(t.plain) }

// all yields every prefix and its claim; the loop may set and delete.
func (t *ipTable) all() iter.Seq2[netip.Prefix, ipState] {
	return func(yield func(netip.Prefix, ipState) bool) {
		for k, v := range t.v4 {
			if !yield(prefix4(k), v.state()) {
				return
			}
		}
		for k, v := range t.v6 {
			if !yield(k.prefix(), v.state()) {
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
