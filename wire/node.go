package wire

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
)

// Address types of a node.
const (
	InternalIP       = "InternalIP"
	ExternalIP       = "ExternalIP"
	CiliumInternalIP = "CiliumInternalIP"
)

// Node is the value of cilium/state/nodes/v1/<cluster>/<node>. Its JSON keys
// are the Go field names, as in Cilium.
type Node struct {
	Name            string
	Cluster         string
	IPAddresses     []NodeAddress
	IPv4AllocCIDR   *CIDR
	IPv6AllocCIDR   *CIDR
	IPv4HealthIP    netip.Addr
	IPv6HealthIP    netip.Addr
	ClusterID       uint32
	Source          string
	EncryptionKey   uint8
	Labels          map[string]string
	Annotations     map[string]string
	WireguardPubKey string
	BootID          string
}

// NodeAddress is one of a node's addresses.
type NodeAddress struct {
	Type string
	IP   netip.Addr
}

// CIDR is a prefix in Cilium's JSON shape {"IP": "10.0.0.0", "Mask": "<base64>"}.
type CIDR struct{ netip.Prefix }

type cidrJSON struct {
	IP   string
	Mask []byte
}

// MarshalJSON encodes the prefix as {"IP","Mask"}.
func (c CIDR) MarshalJSON() ([]byte, error) {
	p := c.Masked()
	bits := p.Addr().BitLen()
	mask := make([]byte, bits/8)
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return json.Marshal(cidrJSON{IP: p.Addr().String(), Mask: mask})
}

// UnmarshalJSON decodes {"IP","Mask"}; the mask must be contiguous and of
// the address's length.
func (c *CIDR) UnmarshalJSON(b []byte) error {
	var v cidrJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	p, err := prefixFromMask("CIDR", v.IP, v.Mask)
	if err != nil {
		return err
	}
	c.Prefix = p
	return nil
}

// prefixFromMask builds a prefix from an address and a net.IPMask-style mask;
// a nil mask means a single address.
func prefixFromMask(what, ip string, mask []byte) (netip.Prefix, error) {
	a, err := parseAddr(what, ip)
	if err != nil {
		return netip.Prefix{}, err
	}
	return addrMaskPrefix(what, a, mask)
}

// addrMaskPrefix is prefixFromMask for a parsed, unmapped address.
func addrMaskPrefix(what string, a netip.Addr, mask []byte) (netip.Prefix, error) {
	ip := a.String // for error messages only
	if mask == nil {
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	if len(mask)*8 != a.BitLen() {
		return netip.Prefix{}, fmt.Errorf("%s %s mask %s: %w (mask length does not match the address)",
			what, ip(), base64.StdEncoding.EncodeToString(mask), ErrInvalidAddress)
	}
	ones, done := 0, false
	for _, b := range mask {
		for i := 7; i >= 0; i-- {
			set := b&(1<<i) != 0
			switch {
			case set && done:
				return netip.Prefix{}, fmt.Errorf("%s %s: %w (non-contiguous mask)", what, ip(), ErrInvalidAddress)
			case set:
				ones++
			default:
				done = true
			}
		}
	}
	p := netip.PrefixFrom(a, ones)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%s %s/%d: %w (host bits set)", what, ip(), ones, ErrInvalidAddress)
	}
	return p, nil
}

// EncodeNode returns the JSON of n.
func EncodeNode(n *Node) ([]byte, error) { return json.Marshal(n) }

// DecodeNode decodes and validates a node read from cluster c under key.
func DecodeNode(c Cluster, key string, value []byte) (*Node, error) {
	pk, err := ParseKey(Nodes, c.Name, key)
	if err != nil {
		return nil, err
	}
	var n Node
	if err := decodeJSON(value, &n); err != nil {
		return nil, fmt.Errorf("decoding node %q: %w", key, err)
	}
	switch {
	case n.Cluster != c.Name:
		return nil, fmt.Errorf("decoding node %q: it claims cluster %q, read from %q: %w", key, n.Cluster, c.Name, ErrClusterMismatch)
	case n.Name != pk.Name:
		return nil, fmt.Errorf("decoding node %q: it has name %q: %w (key and value disagree)", key, n.Name, ErrClusterMismatch)
	case n.ClusterID != c.ID:
		return nil, fmt.Errorf("decoding node %q: it claims cluster id %d, %q has %d: %w", key, n.ClusterID, c.Name, c.ID, ErrClusterMismatch)
	}
	for i, a := range n.IPAddresses {
		if err := checkAddr("address", a.IP, false); err != nil {
			return nil, fmt.Errorf("decoding node %q: %w", key, err)
		}
		n.IPAddresses[i].IP = a.IP.Unmap()
	}
	for _, a := range []*netip.Addr{&n.IPv4HealthIP, &n.IPv6HealthIP} {
		if err := checkAddr("health IP", *a, true); err != nil {
			return nil, fmt.Errorf("decoding node %q: %w", key, err)
		}
		*a = a.Unmap()
	}
	if n.WireguardPubKey != "" {
		if k, err := base64.StdEncoding.DecodeString(n.WireguardPubKey); err != nil || len(k) != 32 {
			return nil, fmt.Errorf("decoding node %q: %w (WireguardPubKey is not a base64 32-byte key)", key, ErrMalformedValue)
		}
	}
	return &n, nil
}

// PrimaryIP returns the node's first InternalIP, else its first address.
func (n *Node) PrimaryIP() netip.Addr {
	for _, a := range n.IPAddresses {
		if a.Type == InternalIP {
			return a.IP
		}
	}
	if len(n.IPAddresses) > 0 {
		return n.IPAddresses[0].IP
	}
	return netip.Addr{}
}
