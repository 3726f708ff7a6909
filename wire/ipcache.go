package wire

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
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
	// Workload is the pod's owning workload, "Kind/name" (WorkloadField:
	// ours, ignored by Cilium).
	Workload string `json:"clustermesh.io/workload,omitempty"`
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
// c's range (or reserved, 1..255) and the host IP, if any, must parse. An
// entry with the host identity (1) comes back with the remote-node identity
// (6), as Cilium maps it: a remote's host is a remote node here.
func DecodeIPIdentityPair(c Cluster, key string, value []byte) (*IPIdentityPair, error) {
	pk, err := ParseKey(IPCache, c.Name, key)
	if err != nil {
		return nil, err
	}
	var p IPIdentityPair
	if err := checkSize(value); err != nil {
		return nil, fmt.Errorf("decoding ipcache entry %q: %w", key, err)
	}
	if !decodeIPIdentityPairFast(value, &p) {
		p = IPIdentityPair{}
		if err := decodeJSON(value, &p); err != nil {
			return nil, fmt.Errorf("decoding ipcache entry %q: %w", key, err)
		}
	}
	// Error contexts are built only on error: this runs once per entry.
	if err := checkAddr("IP", p.IP, false); err != nil {
		return nil, fmt.Errorf("decoding ipcache entry %q: %w", key, err)
	}
	if err := checkAddr("HostIP", p.HostIP, true); err != nil {
		return nil, fmt.Errorf("decoding ipcache entry %q: %w", key, err)
	}
	p.IP, p.HostIP = p.IP.Unmap(), p.HostIP.Unmap()
	pfx, err := addrMaskPrefix("prefix", p.IP, p.Mask)
	if err != nil {
		return nil, fmt.Errorf("decoding ipcache entry %q: %w", key, err)
	}
	// ParseKey accepted only the canonical spelling of a prefix, so keys and
	// prefixes are one-to-one: the value must name the key's prefix.
	if pfx != pk.Prefix {
		return nil, fmt.Errorf("decoding ipcache entry %q: it holds %s: %w (key and value disagree)", key, pfx, ErrInvalidAddress)
	}
	if min := minPrefixBits(pfx); pfx.Bits() < min {
		return nil, fmt.Errorf("decoding ipcache entry %q: %w (a remote may not claim a prefix shorter than /%d)", key, ErrInvalidAddress, min)
	}
	if p.Workload != "" {
		if _, err := ParseWorkload(p.Workload); err != nil {
			return nil, fmt.Errorf("decoding ipcache entry %q: %w", key, err)
		}
	}
	if !c.OwnsIdentity(p.ID) {
		first, last := IdentityRange(c.ID, c.MaxConnectedClusters)
		return nil, fmt.Errorf("decoding ipcache entry %q: identity %d: %w (cluster %q owns %d..%d)", key, p.ID, ErrIdentityOutOfRange, c.Name, first, last)
	}
	if p.ID == IdentityHost {
		// The remote's own node, as that remote sees it: to every other
		// cluster it is a remote node (Cilium v1.20.2,
		// pkg/ipcache/kvstore.go, IPIdentityWatcher.OnUpdate).
		p.ID = IdentityRemoteNode
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
// into the prefix it names, and accepts only its one spelling, the one
// IPCachePrefixKey and Cilium (net.IP.String) write: a bare address for a
// single address, address/bits for a CIDR, the address as netip and net.IP
// format it (IPv4 dotted decimal without leading zeros; IPv6 lower case,
// RFC 5952 compressed). Anything that names a prefix in another spelling
// wraps ErrNonCanonicalKey: a single address with /32 or /128, an
// IPv4-mapped IPv6 address ("::ffff:10.2.1.7"), IPv6 in upper case, with
// leading zeros or not compressed, a CIDR with host bits set
// ("10.1.0.5/16"), an IPv6 zone. Anything that names none wraps
// ErrMalformedKey.
func ParseIPCacheKeySuffix(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.IndexByte(s, '/') >= 0 {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("%w (%q is not an address or CIDR)", ErrMalformedKey, s)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%w (%q is not an address or CIDR)", ErrMalformedKey, s)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, nonCanonical(s, netip.PrefixFrom(a.WithZone(""), a.BitLen()))
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() || p.Masked() != p || !spells(s, p) {
		return netip.Prefix{}, nonCanonical(s, p)
	}
	return p, nil
}

// nonCanonical is the error of key suffix s, which names p (or, with host
// bits set, p.Masked()) in another spelling than its own.
func nonCanonical(s string, p netip.Prefix) error {
	p = p.Masked()
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return fmt.Errorf("%w (%q: an IPv4-mapped prefix)", ErrNonCanonicalKey, s)
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return fmt.Errorf("%w (%q is spelled %q)", ErrNonCanonicalKey, s, canonicalSuffix(p))
}

// spells reports whether s is canonicalSuffix(p), without allocating: this
// runs once per ipcache entry.
func spells(s string, p netip.Prefix) bool {
	var buf [64]byte
	b := p.Addr().AppendTo(buf[:0])
	if !p.IsSingleIP() {
		b = append(b, '/')
		b = strconv.AppendInt(b, int64(p.Bits()), 10)
	}
	return string(b) == s
}
