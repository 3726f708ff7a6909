package datapath

import (
	"fmt"
	"math"
	"net/netip"
)

// Normalisation shared by both implementations, so that they accept, reject
// and rewrite input identically. IPv4-mapped IPv6 addresses become IPv4,
// prefixes are masked (the LPM trie ignores host bits, so 10.0.0.5/24 and
// 10.0.0.0/24 are the same entry: both read back as 10.0.0.0/24).

// maxSlots is the most backend slots a master entry can count.
const maxSlots = math.MaxUint16

func normPrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("datapath: prefix %q: %w", p.String(), ErrInvalidPrefix)
	}
	p = p.Masked()
	// Once masked, only a prefix of /96 or longer can still be v4-mapped.
	if a := p.Addr(); a.Is4In6() {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p, nil
}

// normAddr unmaps a; the returned reason is non-empty when a cannot be
// stored. Callers build their message only on failure (the hot path stays
// free of string formatting).
func normAddr(a netip.Addr) (netip.Addr, string) {
	if !a.IsValid() {
		return netip.Addr{}, "address missing"
	}
	if a.Zone() != "" {
		return netip.Addr{}, "zones cannot be stored"
	}
	return a.Unmap(), ""
}

func normEntry(p netip.Prefix, e IPCacheEntry) (IPCacheEntry, error) {
	if e.TunnelEndpoint.IsValid() {
		a, bad := normAddr(e.TunnelEndpoint)
		if bad != "" {
			return IPCacheEntry{}, fmt.Errorf("datapath: ipcache %s: tunnel endpoint %s: %s: %w", p, e.TunnelEndpoint, bad, ErrInvalidAddr)
		}
		e.TunnelEndpoint = a
	}
	return e, nil
}

// checkPortProto returns a non-empty reason when port or proto is invalid.
func checkPortProto(port uint16, proto Protocol) string {
	if port == 0 {
		return "port 0"
	}
	switch proto {
	case TCP, UDP, SCTP:
		return ""
	}
	return "protocol " + proto.String() + " (want TCP, UDP or SCTP)"
}

func normFrontend(f Frontend) (Frontend, error) {
	a, bad := normAddr(f.Addr)
	if bad != "" {
		return Frontend{}, fmt.Errorf("datapath: frontend %s: %s: %w", f, bad, ErrInvalidAddr)
	}
	f.Addr = a
	if bad := checkPortProto(f.Port, f.Protocol); bad != "" {
		return Frontend{}, fmt.Errorf("datapath: frontend %s: %s: %w", f, bad, ErrInvalidService)
	}
	return f, nil
}

// normBackends returns a normalised copy of bs (never nil).
func normBackends(f Frontend, bs []Backend) ([]Backend, error) {
	if len(bs) > maxSlots {
		return nil, fmt.Errorf("datapath: frontend %s: %d backend slots, at most %d: %w", f, len(bs), maxSlots, ErrInvalidService)
	}
	out := make([]Backend, len(bs))
	for i, b := range bs {
		a, bad := normAddr(b.Addr)
		if bad != "" {
			return nil, fmt.Errorf("datapath: frontend %s: backend %s: %s: %w", f, b, bad, ErrInvalidAddr)
		}
		b.Addr = a
		if bad := checkPortProto(b.Port, b.Protocol); bad != "" {
			return nil, fmt.Errorf("datapath: frontend %s: backend %s: %s: %w", f, b, bad, ErrInvalidService)
		}
		out[i] = b
	}
	return out, nil
}

// normBatch validates and normalises a batch; later duplicates of a prefix
// win, as they would in a loop of single upserts.
func normBatch(prefixes []netip.Prefix, entries []IPCacheEntry) ([]netip.Prefix, []IPCacheEntry, error) {
	if len(prefixes) != len(entries) {
		return nil, nil, fmt.Errorf("datapath: ipcache batch: %d prefixes but %d entries: %w", len(prefixes), len(entries), ErrInvalidBatch)
	}
	ps := make([]netip.Prefix, 0, len(prefixes))
	es := make([]IPCacheEntry, 0, len(entries))
	index := make(map[netip.Prefix]int, len(prefixes))
	for i := range prefixes {
		p, err := normPrefix(prefixes[i])
		if err != nil {
			return nil, nil, err
		}
		e, err := normEntry(p, entries[i])
		if err != nil {
			return nil, nil, err
		}
		if j, dup := index[p]; dup {
			es[j] = e
			continue
		}
		index[p] = len(ps)
		ps = append(ps, p)
		es = append(es, e)
	}
	return ps, es, nil
}
