package wire

import (
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"
)

// Label is one identity label: source:key=value (source "k8s" for pod and
// namespace labels).
type Label struct {
	Source, Key, Value string
}

func (l Label) String() string { return l.Source + ":" + l.Key + "=" + l.Value }

// Labels is a set of labels kept sorted by key, then source: the order of the
// encoded form.
type Labels []Label

// NewLabels builds a sorted label set from a map of key → value with one
// source. A later Set overrides an earlier one with the same key and source.
func NewLabels(source string, m map[string]string) Labels {
	ls := make(Labels, 0, len(m))
	for k, v := range m {
		ls = append(ls, Label{Source: source, Key: k, Value: v})
	}
	ls.sort()
	return ls
}

func (ls Labels) sort() {
	sort.Slice(ls, func(i, j int) bool {
		if ls[i].Key != ls[j].Key {
			return ls[i].Key < ls[j].Key
		}
		return ls[i].Source < ls[j].Source
	})
}

// With returns a copy of ls with l added (replacing a label of the same
// source and key).
func (ls Labels) With(l Label) Labels {
	out := make(Labels, 0, len(ls)+1)
	for _, x := range ls {
		if x.Source != l.Source || x.Key != l.Key {
			out = append(out, x)
		}
	}
	out = append(out, l)
	out.sort()
	return out
}

// Get returns the value of key (any source) and whether it is present.
func (ls Labels) Get(key string) (string, bool) {
	for _, l := range ls {
		if l.Key == key {
			return l.Value, true
		}
	}
	return "", false
}

// String encodes ls in the wire form: "k8s:app=web;k8s:io...=east;".
func (ls Labels) String() string {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l.String())
		b.WriteByte(';')
	}
	return b.String()
}

// ParseLabels parses the wire form. Every item must be source:key=value
// followed by ';', with a non-empty source and key; duplicates are rejected.
func ParseLabels(s string) (Labels, error) {
	if s == "" {
		return nil, nil
	}
	if !strings.HasSuffix(s, ";") {
		return nil, fmt.Errorf("parsing labels %.80q: %w (items must end with ';')", s, ErrInvalidLabels)
	}
	items := strings.Split(strings.TrimSuffix(s, ";"), ";")
	ls := make(Labels, 0, len(items))
	seen := make(map[[2]string]bool, len(items))
	for _, it := range items {
		src, kv, ok := strings.Cut(it, ":")
		if !ok || src == "" {
			return nil, fmt.Errorf("parsing label %.80q: %w (want source:key=value)", it, ErrInvalidLabels)
		}
		k, v, _ := strings.Cut(kv, "=")
		if k == "" {
			return nil, fmt.Errorf("parsing label %.80q: %w (empty key)", it, ErrInvalidLabels)
		}
		if seen[[2]string{src, k}] {
			return nil, fmt.Errorf("parsing label %.80q: %w (duplicate)", it, ErrInvalidLabels)
		}
		seen[[2]string{src, k}] = true
		ls = append(ls, Label{Source: src, Key: k, Value: v})
	}
	ls.sort()
	return ls, nil
}

// Identity is a numeric security identity and its labels.
type Identity struct {
	ID     uint32
	Labels Labels
}

// EncodeIdentity returns the wire value of an identity: its label string.
func EncodeIdentity(id Identity) []byte { return []byte(id.Labels.String()) }

// DecodeIdentity decodes and validates an identity read from cluster c: the
// id must be in c's range and its cluster label must name c.
func DecodeIdentity(c Cluster, key string, value []byte) (Identity, error) {
	pk, err := ParseKey(Identities, c.Name, key)
	if err != nil {
		return Identity{}, err
	}
	if len(value) > MaxValueBytes {
		return Identity{}, fmt.Errorf("decoding identity %q: %w", key, ErrValueTooLarge)
	}
	if pk.ID < MinClusterIdentity || !c.OwnsIdentity(pk.ID) {
		first, last := IdentityRange(c.ID, c.MaxConnectedClusters)
		return Identity{}, fmt.Errorf("decoding identity %d: %w (cluster %q owns %d..%d)", pk.ID, ErrIdentityOutOfRange, c.Name, first, last)
	}
	if !utf8.Valid(value) {
		return Identity{}, fmt.Errorf("decoding identity %d: %w (not UTF-8)", pk.ID, ErrInvalidLabels)
	}
	ls, err := ParseLabels(string(value))
	if err != nil {
		return Identity{}, fmt.Errorf("decoding identity %d: %w", pk.ID, err)
	}
	if err := checkClusterLabel(ls, c.Name); err != nil {
		return Identity{}, fmt.Errorf("decoding identity %d: %w", pk.ID, err)
	}
	return Identity{ID: pk.ID, Labels: ls}, nil
}

// checkClusterLabel requires every cluster label of ls to be a k8s label
// naming cluster, and at least one, as Cilium's clusterNameValidator
// (pkg/identity/cache/allocator.go) does.
func checkClusterLabel(ls Labels, cluster string) error {
	found := false
	for _, l := range ls {
		if l.Key != ClusterLabel {
			continue
		}
		if l.Source != "k8s" || l.Value != cluster {
			return fmt.Errorf("it has cluster label %s, read from %q: %w", l, cluster, ErrClusterMismatch)
		}
		found = true
	}
	if !found {
		return fmt.Errorf("it has no cluster label, read from %q: %w", cluster, ErrClusterMismatch)
	}
	return nil
}

// Reserved identities (Cilium's numbers): not allocated by any cluster, the
// same on every node.
const (
	// IdentityHost is the node an agent runs on, as seen by that agent.
	IdentityHost uint32 = 1
	// IdentityWorld is any address the ipcache does not know.
	IdentityWorld uint32 = 2
	// IdentityRemoteNode is any other node of the mesh.
	IdentityRemoteNode uint32 = 6
)

// HostLabels are the labels of IdentityHost.
var HostLabels = Labels{{Source: "reserved", Key: "host"}}

// IdentityDocument is the stored form of a cluster's identity numbers (label
// string → identity) with the cluster they belong to: the apiserver's
// identity file, or its ConfigMap on Kubernetes.
type IdentityDocument struct {
	Cluster    string            `json:"cluster"`
	ClusterID  uint32            `json:"clusterID"`
	Identities map[string]uint32 `json:"identities"`
}

// Check returns d's identities (never nil) if d belongs to cluster c; where
// names the document and fix says what to do otherwise.
func (d IdentityDocument) Check(c Cluster, where, fix string) (map[string]uint32, error) {
	if d.Cluster != c.Name || d.ClusterID != c.ID {
		return nil, fmt.Errorf("identities in %s belong to cluster %q id %d, not %q id %d: %s",
			where, d.Cluster, d.ClusterID, c.Name, c.ID, fix)
	}
	if d.Identities == nil {
		return map[string]uint32{}, nil
	}
	return d.Identities, nil
}
