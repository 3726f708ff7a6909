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
	pfx, err := prefixFromMask("ip", p.IP.String(), p.Mask)
	if err != nil {
		return netip.Prefix{}
	}
	return pfx
}

// KeySuffix is the part of the key after the address space: the address, or
// the CIDR when Mask is set.
func (p *IPIdentityPair) KeySuffix() string {
	if p.Mask == nil {
		return p.IP.String()
	}
	return p.Prefix().String()
}

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
	if err := decodeJSON(value, &p); err != nil {
		return nil, fmt.Errorf("wire: ipcache %q: %w", key, err)
	}
	if err := checkAddr("wire: ipcache "+key+" IP", p.IP, false); err != nil {
		return nil, err
	}
	if err := checkAddr("wire: ipcache "+key+" HostIP", p.HostIP, true); err != nil {
		return nil, err
	}
	p.IP, p.HostIP = p.IP.Unmap(), p.HostIP.Unmap()
	pfx, err := prefixFromMask("wire: ipcache "+key, p.IP.String(), p.Mask)
	if err != nil {
		return nil, err
	}
	if keyPfx, err := parseKeyPrefix(pk.Name); err != nil || keyPfx != pfx {
		return nil, fmt.Errorf("wire: ipcache %q holds %s: %w (key and value disagree)", key, pfx, ErrInvalidAddress)
	}
	if min := minPrefixBits(pfx); pfx.Bits() < min {
		return nil, fmt.Errorf("wire: ipcache %q: %w (a remote may not claim a prefix shorter than /%d)", key, ErrInvalidAddress, min)
	}
	if p.ID == HostIdentity || !c.OwnsIdentity(p.ID) {
		first, last := IdentityRange(c.ID, c.MaxConnectedClusters)
		return nil, fmt.Errorf("wire: ipcache %q identity %d: %w (cluster %q owns %d..%d)", key, p.ID, ErrIdentityOutOfRange, c.Name, first, last)
	}
	return &p, nil
}

// HostIdentity is the reserved identity of the local host: never valid from
// a remote.
const HostIdentity = 1

// minPrefixBits is the shortest prefix a remote may claim in the ipcache:
// anything broader would capture traffic far beyond one cluster.
func minPrefixBits(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 8
	}
	return 32
}

// parseKeyPrefix parses an ipcache key suffix: an address or a CIDR.
func parseKeyPrefix(s string) (netip.Prefix, error) {
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
