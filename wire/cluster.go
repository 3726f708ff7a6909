// Package wire owns the ClusterMesh kvstore format shared by the mesh
// apiserver (which writes it) and the agent (which reads it): the keys, the
// value types, their JSON encoding, and the validation of every entry against
// the remote cluster it was read from. It follows Cilium's layout so that both
// sides interoperate with Cilium's, and imports nothing but the standard
// library.
//
// Invariant: a value returned by a Decode function has passed every check of
// the reference table for its kind; anything else is an error wrapping one of
// the sentinels in errors.go.
//
// Its surface is large (about a hundred exported names) because it is the
// format itself: Cilium's value types with their JSON field names, one key
// builder and one decoder per kind, the reserved identities, the annotation
// names of global services and one sentinel per rejection reason. Splitting
// it would split one format between packages that must agree on every byte.
package wire

import (
	"encoding/json"
	"fmt"
	"regexp"
)

// Cluster naming and numbering limits.
const (
	MaxClusterNameLen = 32
	// DefaultMaxConnectedClusters is Cilium's default: 8 bits of cluster id.
	DefaultMaxConnectedClusters = 255
	// ExtendedMaxConnectedClusters takes 9 bits of the identity for the id.
	ExtendedMaxConnectedClusters = 511
	// MinClusterIdentity is the first identity that is not reserved.
	MinClusterIdentity = 256
	// identityBits is the width of a numeric security identity.
	identityBits = 24
)

// Cluster label carried by every identity (source k8s).
const ClusterLabel = "io.cilium.k8s.policy.cluster"

// NamespaceLabel carries a pod identity's namespace (source k8s).
const NamespaceLabel = "io.kubernetes.pod.namespace"

var clusterNameRE = regexp.MustCompile(`^([a-z0-9][-a-z0-9]*)?[a-z0-9]$`)

// ValidateClusterName checks a cluster name against the naming rules.
func ValidateClusterName(name string) error {
	if len(name) == 0 || len(name) > MaxClusterNameLen || !clusterNameRE.MatchString(name) {
		return fmt.Errorf("cluster name %q: %w (at most %d characters of a-z, 0-9 and '-', starting and ending with a letter or digit)",
			name, ErrInvalidClusterName, MaxClusterNameLen)
	}
	return nil
}

// ValidateMaxConnectedClusters accepts the two supported sizes.
func ValidateMaxConnectedClusters(max uint32) error {
	if max != DefaultMaxConnectedClusters && max != ExtendedMaxConnectedClusters {
		return fmt.Errorf("maxConnectedClusters %d: %w (want %d or %d)", max, ErrIncompatibleConfig,
			DefaultMaxConnectedClusters, ExtendedMaxConnectedClusters)
	}
	return nil
}

// ValidateClusterID checks that id is a usable cluster id for a mesh of max
// clusters, and that the name "default" is not combined with a non-zero id.
func ValidateClusterID(name string, id, max uint32) error {
	if err := ValidateMaxConnectedClusters(max); err != nil {
		return err
	}
	if id < 1 || id > max {
		return fmt.Errorf("cluster %q id %d: %w (want 1..%d)", name, id, ErrInvalidClusterID, max)
	}
	if name == "default" {
		return fmt.Errorf("cluster name %q cannot be used with a non-zero id: %w", name, ErrInvalidClusterName)
	}
	return nil
}

// IdentityRange returns the first and last numeric identity owned by cluster
// id in a mesh of max clusters: the id sits in the top 8 (or 9) of 24 bits.
// The caller must have validated id and max.
func IdentityRange(id, max uint32) (first, last uint32) {
	clusterBits := uint32(8)
	if max == ExtendedMaxConnectedClusters {
		clusterBits = 9
	}
	shift := identityBits - clusterBits
	return id << shift, (id+1)<<shift - 1
}

// Cluster identifies the remote a value was read from; every Decode
// validates against it.
type Cluster struct {
	Name                 string
	ID                   uint32
	MaxConnectedClusters uint32
}

// Validate checks the name, the id and the mesh size.
func (c Cluster) Validate() error {
	if err := ValidateClusterName(c.Name); err != nil {
		return err
	}
	return ValidateClusterID(c.Name, c.ID, c.MaxConnectedClusters)
}

// OwnsIdentity reports whether id is inside c's identity range or reserved.
func (c Cluster) OwnsIdentity(id uint32) bool {
	if id > 0 && id < MinClusterIdentity {
		return true
	}
	first, last := IdentityRange(c.ID, c.MaxConnectedClusters)
	return id >= first && id <= last
}

// ClusterConfig is the value of cilium/cluster-config/<cluster>.
// Every field is omitted when zero, as Cilium writes it
// (pkg/clustermesh/types/types.go, CiliumClusterConfig).
type ClusterConfig struct {
	ID           uint32       `json:"id,omitempty"`
	Capabilities Capabilities `json:"capabilities"`
}

// Capabilities of a cluster's kvstore.
type Capabilities struct {
	SyncedCanaries        bool   `json:"syncedCanaries,omitempty"`
	Cached                bool   `json:"cached,omitempty"`
	MaxConnectedClusters  uint32 `json:"maxConnectedClusters,omitempty"`
	ServiceExportsEnabled *bool  `json:"serviceExportsEnabled,omitempty"`
	// LocalView: the cluster's apiserver publishes its complete ipcache
	// and identities for its own agents under LocalViewPrefix
	// (localview.go). Ours only; Cilium ignores it.
	LocalView bool `json:"localView,omitempty"`
}

// EncodeClusterConfig returns the JSON of cfg.
func EncodeClusterConfig(cfg ClusterConfig) ([]byte, error) { return json.Marshal(cfg) }

// EndpointSlicesExportMode is capabilities.endpointSlicesExportMode of a
// Cilium v1.20 cluster config: whether the cluster exports its global
// services as services, as endpoint slices (zstd-compressed entries under
// cilium/state/endpointslices/v1/), or both. Cilium v1.20.2:
// pkg/clustermesh/types/types.go; written by
// pkg/clustermesh/clustercfg/cell/cell.go.
type EndpointSlicesExportMode string

// The export modes Cilium defines; any other value is refused, as Cilium's
// ValidateRemoteConfig refuses it.
const (
	ExportServicesOnly              EndpointSlicesExportMode = ""
	ExportServicesAndEndpointSlices EndpointSlicesExportMode = "services-and-endpointslices"
	ExportEndpointSlicesOnly        EndpointSlicesExportMode = "endpointslices-only"
)

// ExportsServices reports whether a cluster in mode m publishes its global
// services under cilium/state/services/v1/ (all modes but
// endpointslices-only).
func (m EndpointSlicesExportMode) ExportsServices() bool { return m != ExportEndpointSlicesOnly }

// DecodeEndpointSlicesExportMode returns the export mode a cluster config
// advertises, and refuses one Cilium does not define.
func DecodeEndpointSlicesExportMode(value []byte) (EndpointSlicesExportMode, error) {
	var v struct {
		Capabilities struct {
			Mode EndpointSlicesExportMode `json:"endpointSlicesExportMode"`
		} `json:"capabilities"`
	}
	if err := decodeJSON(value, &v); err != nil {
		return "", err
	}
	switch m := v.Capabilities.Mode; m {
	case ExportServicesOnly, ExportServicesAndEndpointSlices, ExportEndpointSlicesOnly:
		return m, nil
	default:
		return "", fmt.Errorf("endpointSlicesExportMode %.40q: %w (want %q, %q or none)", m, ErrIncompatibleConfig,
			ExportServicesAndEndpointSlices, ExportEndpointSlicesOnly)
	}
}

// DecodeClusterConfig decodes the config of the cluster named name and
// checks it against the local mesh size localMax: the id must be in range,
// the endpoint-slices export mode one Cilium defines, and both sides must
// agree on maxConnectedClusters. A config without maxConnectedClusters
// means Cilium's default of 255.
//
// Cilium requires equal sizes only when the reader runs with 511
// (pkg/clustermesh/types/option.go, ValidateRemoteConfig). We require them
// in both directions: a 511 cluster's identities are 32,768-wide ranges
// (id<<15) and a 255 reader's 65,536-wide ones (id<<16), so the same number
// names different clusters on the two sides. A 255 Cilium agent connected
// to a 511 remote validates the remote's entries against its own range
// (pkg/ipcache/kvstore.go WithIdentityValidator with
// pkg/identity/numericidentity.go GetMinimalAllocationIdentity, shift from
// the local size), so it drops every identity and ipcache entry of that
// remote anyway; refusing the remote whole says so once, with what to change.
func DecodeClusterConfig(name string, localMax uint32, value []byte) (Cluster, ClusterConfig, error) {
	var cfg ClusterConfig
	if err := decodeJSON(value, &cfg); err != nil {
		return Cluster{}, cfg, fmt.Errorf("decoding the cluster config of %q: %w", name, err)
	}
	remoteMax := cfg.Capabilities.MaxConnectedClusters
	if remoteMax == 0 {
		remoteMax = DefaultMaxConnectedClusters
	}
	if err := CompatibleMaxConnectedClusters(name, localMax, remoteMax); err != nil {
		return Cluster{}, cfg, err
	}
	if _, err := DecodeEndpointSlicesExportMode(value); err != nil {
		return Cluster{}, cfg, fmt.Errorf("the cluster config of %q: %w", name, err)
	}
	c := Cluster{Name: name, ID: cfg.ID, MaxConnectedClusters: localMax}
	if err := c.Validate(); err != nil {
		return Cluster{}, cfg, err
	}
	return c, cfg, nil
}

// CompatibleMaxConnectedClusters refuses a remote (named name) whose mesh
// size differs from the local one, saying why and what to change (see
// DecodeClusterConfig).
func CompatibleMaxConnectedClusters(name string, localMax, remoteMax uint32) error {
	switch {
	case remoteMax == localMax:
		return nil
	case remoteMax != DefaultMaxConnectedClusters && remoteMax != ExtendedMaxConnectedClusters:
		return fmt.Errorf("cluster %q: %w", name, ValidateMaxConnectedClusters(remoteMax))
	case localMax == DefaultMaxConnectedClusters:
		return fmt.Errorf("cluster %q runs with maxConnectedClusters %d, this cluster with %d: %w: its identities are numbered in ranges of %d per cluster id, ours in ranges of %d, so its identity numbers would name other clusters' identities here (Cilium's agent would drop all of them as out of range); set maxConnectedClusters to the same value on both clusters",
			name, remoteMax, localMax, ErrIncompatibleConfig, 1<<(identityBits-9), 1<<(identityBits-8))
	default:
		return fmt.Errorf("cluster %q runs with maxConnectedClusters %d, this cluster with %d: %w: its identities are numbered in ranges of %d per cluster id, ours in ranges of %d, so its identity numbers would name other clusters' identities here (Cilium refuses it too); set maxConnectedClusters to the same value on both clusters",
			name, remoteMax, localMax, ErrIncompatibleConfig, 1<<(identityBits-8), 1<<(identityBits-9))
	}
}
