package wire

import "errors"

// Sentinel errors. Every error a decoder returns wraps exactly one of them, so
// callers can count rejections by reason (see Reason).
var (
	// ErrMalformedKey: the key is not a key of this layout (wrong prefix,
	// empty or extra path segments, "..", not UTF-8, too long).
	ErrMalformedKey = errors.New("malformed key")
	// ErrNonCanonicalKey: the key names an address or prefix, but not in
	// its one spelling (see ParseIPCacheKeySuffix): "10.2.1.7/32",
	// "::ffff:10.2.1.7", "FD00::1", "10.1.0.5/16". A publisher never writes
	// it; a peer that does is trying to alias another entry.
	ErrNonCanonicalKey = errors.New("non-canonical key")
	// ErrMalformedValue: the value is not valid UTF-8 JSON of the expected shape.
	ErrMalformedValue = errors.New("malformed value")
	// ErrValueTooLarge: the value exceeds MaxValueBytes.
	ErrValueTooLarge = errors.New("value too large")
	// ErrClusterMismatch: the entry names another cluster (name or id) than
	// the remote it was read from, or its key disagrees with its value.
	ErrClusterMismatch = errors.New("cluster mismatch")
	// ErrIdentityOutOfRange: a security identity outside the remote's range
	// that is not a reserved identity.
	ErrIdentityOutOfRange = errors.New("identity out of range")
	// ErrInvalidAddress: an IP address or prefix that does not parse, has an
	// IPv6 zone, or disagrees with its mask.
	ErrInvalidAddress = errors.New("invalid address")
	// ErrInvalidClusterName: a cluster name that breaks the naming rules.
	ErrInvalidClusterName = errors.New("invalid cluster name")
	// ErrInvalidClusterID: a cluster id outside 1..maxConnectedClusters.
	ErrInvalidClusterID = errors.New("invalid cluster id")
	// ErrIncompatibleConfig: the remote's capabilities cannot be used with
	// ours (different maxConnectedClusters).
	ErrIncompatibleConfig = errors.New("incompatible cluster config")
	// ErrInvalidLabels: an identity's label string does not parse.
	ErrInvalidLabels = errors.New("invalid labels")
)

var reasons = []struct {
	err    error
	reason string
}{
	{ErrMalformedKey, "malformed_key"},
	{ErrNonCanonicalKey, "non_canonical_key"},
	{ErrMalformedValue, "malformed_value"},
	{ErrValueTooLarge, "value_too_large"},
	{ErrClusterMismatch, "cluster_mismatch"},
	{ErrIdentityOutOfRange, "identity_out_of_range"},
	{ErrInvalidAddress, "invalid_address"},
	{ErrInvalidClusterName, "invalid_cluster_name"},
	{ErrInvalidClusterID, "invalid_cluster_id"},
	{ErrIncompatibleConfig, "incompatible_config"},
	{ErrInvalidLabels, "invalid_labels"},
}

// Reason returns a short, stable label for err, suitable as a metric label
// value: "malformed_key", "identity_out_of_range", ...; "other" when err wraps
// none of this package's sentinels.
func Reason(err error) string {
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return "other"
}
