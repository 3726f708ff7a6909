package wire

import (
	"encoding/json"
	"fmt"
	"net/netip"
)

// IPIdentityPair is the value of cilium/state/ip/v1/default/<ip-or-cidr>: an
// address (or CIDR, when Mask is set), its security identity and the node
// that hosts it. JSON keys are the Go field names, as in Cilium.
type IPIdentityPair struct {
	IP           netip.Addr
	Mask         []byte // net.IPMask; nil for a single address
	HostIP       netip.Addr
	ID           uint32
	Key          uint8
	Metadata     string
	K8sNamespace string      `json:",omitempty"`
	K8sPodName   string      `json:",omitempty"`
	NamedPorts   []NamedPort `json:",omitempty"`
}

// NamedPort is a named container port of the endpoint.
type NamedPort struct {
	Name     string
	Port     uint16
	Protocol string
}

// Prefix returns the pair's address as a prefix (a /32 or /128 without mask).
// Only meaningful on a decoded (validated) pair.
func (p *IPIdentityPair) Prefix() netip.Prefix {
	pfx, err := addrMaskPrefix("ip", p.IP, p.Mask)
	if err != nil {
		return netip.Prefix{}
	}
	return pfx
}

// KeySuffix is the part of the key after the address space: the address
// for a single address (with or without a full mask), else the CIDR.
func (p *IPIdentityPair) KeySuffix() string { return canonicalSuffix(p.Prefix()) }

// EncodeIPIdentityPair returns the JSON of p.
func EncodeIPIdentityPair(p *IPIdentityPair) ([]byte, error) { return json.Marshal(p) }

// DecodeIPIdentityPair decodes and validates an ipcache entry read from
// cluster c: the key must name the value's address, the identity must be in
// c's range (or reserved) and the host IP, if any, must parse.
func DecodeIPIdentityPair(c Cluster, key string, value []byte) (*IPIdentityPair, error) {
	pk, err := ParseKey(IPCache, c.Name, key)
	if err != nil {
		return nil, err
	}
	var p IPIdentityPair
	if err := checkSize(value); err != nil {
		return nil, fmt.Errorf("wire: ipcache %q: %w", key, err)
	}
	if !decodeIPIdentityPairFast(value, &p) {
		p = IPIdentityPair{}
		if err := decodeJSON(value, &p); err != nil {
			return nil, fmt.Errorf("wire: ipcache %q: %w", key, err)
		}
	}
	// Error contexts are built only on error: this runs once per entry.
	if err := checkAddr("IP", p.IP, false); err != nil {
		return nil, fmt.Errorf("wire: ipcache %q: %w", key, err)
	}
	if err := checkAddr("HostIP", p.HostIP, true); err != nil {
		return nil, fmt.Errorf("wire: ipcache %q: %w", key, err)
	}
	p.IP, p.HostIP = p.IP.Unmap(), p.HostIP.Unmap()
	pfx, err := addrMaskPrefix("prefix", p.IP, p.Mask)
	if err != nil {
		return nil, fmt.Errorf("wire: ipcache %q: %w", key, err)
	}
	// Keys and prefixes are one-to-one: the key must be the canonical
	// spelling of the value's prefix (checked by comparing the strings; the
	// key is parsed only to say which way it is wrong).
	if canon := canonicalSuffix(pfx); pk.Name != canon {
		if keyPfx, err := ParseIPCacheKeySuffix(pk.Name); err == nil && keyPfx == pfx {
			return nil, fmt.Errorf("wire: ipcache %q: %w (the key of %s is %q)", key, ErrMalformedKey, pfx, IPCacheKey(canon))
		}
		return nil, fmt.Errorf("wire: ipcache %q holds %s: %w (key and value disagree)", key, pfx, ErrInvalidAddress)
	}
	if min := minPrefixBits(pfx); pfx.Bits() < min {
		return nil, fmt.Errorf("wire: ipcache %q: %w (a remote may not claim a prefix shorter than /%d)", key, ErrInvalidAddress, min)
	}
	if p.ID == IdentityHost || !c.OwnsIdentity(p.ID) {
		first, last := IdentityRange(c.ID, c.MaxConnectedClusters)
		return nil, fmt.Errorf("wire: ipcache %q identity %d: %w (cluster %q owns %d..%d)", key, p.ID, ErrIdentityOutOfRange, c.Name, first, last)
	}
	return &p, nil
}

// minPrefixBits is the shortest prefix a remote may claim in the ipcache:
// anything broader would capture traffic far beyond one cluster.
func minPrefixBits(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 8
	}
	return 32
}

// canonicalSuffix is the one key suffix of a prefix: the bare address for a
// full-length prefix, the CIDR otherwise. Keys and prefixes are then
// one-to-one, so a reader may key its state by prefix.
func canonicalSuffix(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// ParseIPCacheKeySuffix parses an ipcache key suffix (an address or a CIDR)
// into the prefix it names.
func ParseIPCacheKeySuffix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		if p.Addr().Zone() != "" || p.Masked() != p {
			return netip.Prefix{}, ErrInvalidAddress
		}
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, ErrInvalidAddress
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
