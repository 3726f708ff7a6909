package wire

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Key prefixes of the layout. All end without a slash; list with Kind.ListPrefix.
const (
	Root                = "cilium/"
	HeartbeatKey        = "cilium/.heartbeat"
	ClusterConfigPrefix = "cilium/cluster-config/"
	SyncedPrefix        = "cilium/synced/"
	StatePrefix         = "cilium/state/"
	NodesPrefix         = "cilium/state/nodes/v1"
	ServicesPrefix      = "cilium/state/services/v1"
	IPCachePrefix       = "cilium/state/ip/v1"
	IdentitiesPrefix    = "cilium/state/identities/v1"
	// ServiceExportsPrefix is Cilium's MCS API export specs
	// (pkg/clustermesh/mcsapi/types: ServiceExportStorePrefix).
	ServiceExportsPrefix = "cilium/state/serviceexports/v1"

	// ipcacheAddressSpace is the literal address space in ipcache keys.
	ipcacheAddressSpace = "default"
	identityIDSegment   = "id"
)

// Size limits applied to anything read from a remote. MaxValueBytes holds a
// global service of 10,000 backends in every shape Cilium publishes (up to
// 2.4 MiB with IPv6, two ports, zones and hostnames; TestFiguresServiceValueBytes);
// the apiserver's transaction budget and etcd's request limit sit above it
// (meshapiserver's chain of limits), and an agent bounds what one remote
// holds in bytes (agentsync.Limits).
const (
	MaxKeyBytes   = 512
	MaxValueBytes = 4 << 20
)

// Kind is one of the kinds of state a cluster publishes.
type Kind int

// The kinds, in the order an agent starts them.
const (
	Nodes Kind = iota
	Identities
	IPCache
	Services
	// ServiceExports are the MCS API's export specs (serviceexport.go). A
	// cluster publishes them when its config says
	// capabilities.serviceExportsEnabled; they are not in Kinds, whose
	// four every cluster publishes, but in PublishedKinds.
	ServiceExports
)

// Kinds lists the four kinds every cluster publishes.
var Kinds = []Kind{Nodes, Identities, IPCache, Services}

// PublishedKinds lists every kind our apiserver publishes: Kinds and
// ServiceExports.
var PublishedKinds = []Kind{Nodes, Identities, IPCache, Services, ServiceExports}

// String returns the kind's short name (nodes, identities, ipcache, services).
func (k Kind) String() string {
	switch k {
	case Nodes:
		return "nodes"
	case Identities:
		return "identities"
	case IPCache:
		return "ipcache"
	case Services:
		return "services"
	case ServiceExports:
		return "serviceexports"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Prefix returns the kind's state prefix (also the suffix of its canary key).
func (k Kind) Prefix() string {
	switch k {
	case Nodes:
		return NodesPrefix
	case Identities:
		return IdentitiesPrefix
	case IPCache:
		return IPCachePrefix
	case Services:
		return ServicesPrefix
	case ServiceExports:
		return ServiceExportsPrefix
	}
	return ""
}

// ListPrefix returns the prefix, with its trailing slash, under which cluster
// publishes entries of this kind (so that "east" never matches "east2").
func (k Kind) ListPrefix(cluster string) string {
	switch k {
	case Nodes, Services, ServiceExports:
		return k.Prefix() + "/" + cluster + "/"
	case IPCache:
		return IPCachePrefix + "/" + ipcacheAddressSpace + "/"
	case Identities:
		return IdentitiesPrefix + "/" + identityIDSegment + "/"
	}
	return ""
}

// ClusterConfigKey is where cluster's config lives.
func ClusterConfigKey(cluster string) string { return ClusterConfigPrefix + cluster }

// SyncedKey is the synced canary of kind for cluster.
func SyncedKey(cluster string, k Kind) string { return SyncedPrefix + cluster + "/" + k.Prefix() }

// SyncedClusterPrefix is the prefix under which all of cluster's canaries live.
func SyncedClusterPrefix(cluster string) string { return SyncedPrefix + cluster + "/" }

// NodeKey is the key of node name in cluster.
func NodeKey(cluster, name string) string { return Nodes.ListPrefix(cluster) + name }

// ServiceKey is the key of service namespace/name in cluster.
func ServiceKey(cluster, namespace, name string) string {
	return Services.ListPrefix(cluster) + namespace + "/" + name
}

// IPCacheKey is the key of an address or CIDR ("10.0.0.1", "10.1.0.0/16"),
// spelled as given: build keys of prefixes with IPCachePrefixKey.
func IPCacheKey(addrOrCIDR string) string { return IPCache.ListPrefix("") + addrOrCIDR }

// IPCachePrefixKey is the one key of prefix p, the only spelling ParseKey
// accepts: the bare address for a full-length prefix, the CIDR otherwise, an
// IPv4-mapped prefix unmapped (one shorter than /96 has no key). Publishers
// build ipcache keys with it.
func IPCachePrefixKey(p netip.Prefix) string {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return IPCacheKey(canonicalSuffix(p))
}

// IdentityKey is the key of a numeric identity.
func IdentityKey(id uint32) string {
	return Identities.ListPrefix("") + strconv.FormatUint(uint64(id), 10)
}

// ParsedKey is a state key split into its parts. Which fields are set depends
// on Kind: Nodes (Cluster, Name), Services (Cluster, Namespace, Name), IPCache
// (Name: the address or CIDR as written; Prefix: the prefix it names),
// Identities (ID).
type ParsedKey struct {
	Kind      Kind
	Cluster   string
	Namespace string
	Name      string
	ID        uint32
	Prefix    netip.Prefix
}

// ParseKey splits a state key of kind k read from cluster's store. It rejects
// keys of another cluster, with empty, "." or ".." segments, with extra or
// missing segments, that are not UTF-8, or longer than MaxKeyBytes
// (ErrMalformedKey), and keys that are not the one spelling of what they name
// (ErrNonCanonicalKey): an identity that is not a canonical decimal number, an
// ipcache address or CIDR that is not canonical (ParseIPCacheKeySuffix).
//
// Every key a decoder accepts therefore parses, and every entry it names has
// exactly one key: node and service keys are kept by their exact string,
// identity keys by number, ipcache keys by prefix. A reader may ignore the
// delete of a key that does not parse: no put of that key was ever accepted,
// so there is nothing to delete, and a delete of an alias ("10.2.1.7/32" next
// to "10.2.1.7") can never remove the entry of the canonical key.
func ParseKey(k Kind, cluster, key string) (ParsedKey, error) {
	prefix := k.ListPrefix(cluster)
	if len(key) > MaxKeyBytes || !utf8.ValidString(key) {
		return ParsedKey{}, fmt.Errorf("parsing key %.80q: %w (too long or not UTF-8)", key, ErrMalformedKey)
	}
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return ParsedKey{}, fmt.Errorf("parsing key %q: %w (not under %q)", key, ErrMalformedKey, prefix)
	}
	parts := strings.Split(rest, "/")
	want := 1
	if k == Services || k == ServiceExports {
		want = 2
	}
	if k == IPCache && len(parts) == 2 {
		want = 2 // a CIDR: "10.1.0.0/16"
	}
	if len(parts) != want {
		return ParsedKey{}, fmt.Errorf("parsing key %q: %w (want %d segment(s) after %q)", key, ErrMalformedKey, want, prefix)
	}
	for _, p := range parts {
		if p == "" || p == "." || p == ".." || strings.ContainsAny(p, "\x00\n\r") {
			return ParsedKey{}, fmt.Errorf("parsing key %q: %w (empty or relative segment)", key, ErrMalformedKey)
		}
	}
	pk := ParsedKey{Kind: k, Cluster: cluster}
	switch k {
	case Nodes:
		pk.Name = parts[0]
	case Services, ServiceExports:
		pk.Namespace, pk.Name = parts[0], parts[1]
	case IPCache:
		pfx, err := ParseIPCacheKeySuffix(rest)
		if err != nil {
			return ParsedKey{}, fmt.Errorf("parsing key %q: %w", key, err)
		}
		pk.Cluster = ""
		pk.Name = rest
		pk.Prefix = pfx
	case Identities:
		pk.Cluster = ""
		id, err := strconv.ParseUint(parts[0], 10, 32)
		switch {
		case err != nil:
			return ParsedKey{}, fmt.Errorf("parsing key %q: %w (identity is not a decimal number)", key, ErrMalformedKey)
		case strconv.FormatUint(id, 10) != parts[0]:
			return ParsedKey{}, fmt.Errorf("parsing key %q: %w (the key of identity %d is %q)", key, ErrNonCanonicalKey, id, IdentityKey(uint32(id)))
		}
		pk.ID = uint32(id)
	}
	return pk, nil
}
