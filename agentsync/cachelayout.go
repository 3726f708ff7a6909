package agentsync

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/clustermesh/clustermesh/wire"
)

// The cache layout: a kvstoremesh cache (package kvstoremesh, Cilium's
// KVStoreMesh) copies every remote's state into its own cluster's etcd
// under cilium/cache/, exactly as Cilium's KVStoreMesh lays it out
// (pkg/clustermesh/kvstoremesh/reflector, v1.20.2):
//
//	cilium/cache/nodes/v1/<remote>/<node>
//	cilium/cache/services/v1/<remote>/<namespace>/<name>
//	cilium/cache/ip/v1/<remote>/<address or CIDR>
//	cilium/cache/identities/v1/<remote>/id/<id>
//	cilium/synced/<remote>/cilium/cache/<kind>/v1   (per-remote synced canaries)
//	cilium/cluster-config/<remote>                 (with capabilities.cached)
//
// An agent whose remote's cluster config says cached reads these instead
// of cilium/state/: every key is mapped back to the state key it stands for
// and validated as if it came from the remote itself. Beyond Cilium, the
// cache writes what its session with each remote is
// (cilium/cache/.status/<remote>, CacheStatus), so that an agent tells "the
// remote is down" from "the cache is down".

// CacheStatusPrefix is where a cache writes its session state per remote.
const CacheStatusPrefix = "cilium/cache/.status/"

// CacheStatusInterval is how often a cache rewrites every remote's
// CacheStatus; an agent that sees none newer than three intervals reports
// the cache down (ViaCache.CacheDown).
const CacheStatusInterval = 5 * time.Second

// CacheStatus is a cache's session with one remote, the value of
// CacheStatusKey(remote).
type CacheStatus struct {
	Connected     bool      `json:"connected"`
	Ready         bool      `json:"ready"`
	LastHeartbeat time.Time `json:"lastHeartbeat,omitzero"` // the remote's own heartbeat as the cache read it
	LastError     string    `json:"lastError,omitempty"`
	Updated       time.Time `json:"updated"`
}

// ViaCache is what an agent knows of a remote it reads through a cache.
type ViaCache struct {
	CacheStatus
	// CacheDown: the cache has not rewritten the remote's status for three
	// CacheStatusIntervals: what the agent holds of the remote is as the
	// cache last wrote it. (A cache that writes no status, Cilium's
	// KVStoreMesh, gives no ViaCache.)
	CacheDown bool `json:"cacheDown"`
}

// CacheStatusKey is the key of remote's CacheStatus.
func CacheStatusKey(remote string) string { return CacheStatusPrefix + remote }

// cacheBase is the kind's cache prefix without a cluster:
// cilium/cache/<kind>/v1.
func cacheBase(k wire.Kind) string {
	return "cilium/cache/" + strings.TrimPrefix(k.Prefix(), wire.StatePrefix)
}

// CacheListPrefix is the prefix, with its trailing slash, under which a
// cache holds remote's entries of kind k.
func CacheListPrefix(k wire.Kind, remote string) string {
	p := cacheBase(k) + "/" + remote + "/"
	if k == wire.Identities {
		p += "id/"
	}
	return p
}

// CacheSyncedKey is the synced canary a cache writes once remote's kind k
// is fully written: cilium/synced/<remote>/cilium/cache/<kind>/v1.
func CacheSyncedKey(remote string, k wire.Kind) string {
	return wire.SyncedPrefix + remote + "/" + cacheBase(k)
}

// CacheKey maps remote's state key of kind k to its cache key.
func CacheKey(k wire.Kind, remote, stateKey string) (string, error) {
	suffix, ok := strings.CutPrefix(stateKey, k.ListPrefix(remote))
	if !ok {
		return "", fmt.Errorf("%w: %q is not a %s key of cluster %s", wire.ErrMalformedKey, stateKey, k, remote)
	}
	return CacheListPrefix(k, remote) + suffix, nil
}

// StateKey maps a cache key of remote's kind k back to the state key it
// stands for; a key outside the kind's cache prefix is returned as it is
// (its validation then refuses it).
func StateKey(k wire.Kind, remote, cacheKey string) string {
	suffix, ok := strings.CutPrefix(cacheKey, CacheListPrefix(k, remote))
	if !ok {
		return cacheKey
	}
	return k.ListPrefix(remote) + suffix
}

// CachedClusterConfig returns a remote's cluster config as a cache
// republishes it: every field kept, capabilities.cached and
// capabilities.syncedCanaries set (the cache writes its own canaries).
func CachedClusterConfig(raw []byte) ([]byte, error) {
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("%w: cluster config: %w", wire.ErrMalformedValue, err)
	}
	if cfg == nil {
		return nil, fmt.Errorf("%w: cluster config: null", wire.ErrMalformedValue)
	}
	caps, _ := cfg["capabilities"].(map[string]any)
	if caps == nil {
		caps = map[string]any{}
	}
	caps["cached"], caps["syncedCanaries"] = true, true
	// The remote's local view is its own agents' (wire.LocalViewPrefix):
	// a cache cannot read it, and serves only what it copied.
	delete(caps, "localView")
	cfg["capabilities"] = caps
	return json.Marshal(cfg)
}

// layout is where a session reads a remote's entries: its own state
// prefixes, or a cache's, or — for the local cluster's own apiserver when
// its config says capabilities.localView — the local view
// (wire.LocalViewPrefix, see local.go) for the kinds it holds.
type layout struct{ cached, local bool }

// inLocalView reports whether kind k is read from the local view.
func (l layout) inLocalView(k wire.Kind) bool { return l.local && wire.InLocalView(k) }

func (l layout) canaryKey(remote string, k wire.Kind) string {
	switch {
	case l.cached:
		return CacheSyncedKey(remote, k)
	case l.inLocalView(k):
		return wire.LocalViewSyncedKey(k)
	}
	return wire.SyncedKey(remote, k)
}

func (l layout) listPrefix(k wire.Kind, remote string) string {
	switch {
	case l.cached:
		return CacheListPrefix(k, remote)
	case l.inLocalView(k):
		return wire.LocalViewListPrefix(k)
	}
	return k.ListPrefix(remote)
}

// stateKey maps a key read in the layout to the state key it stands for,
// which is then validated as the remote's own (a key outside the layout's
// prefix is returned as it is, and refused).
func (l layout) stateKey(k wire.Kind, remote, key string) string {
	switch {
	case l.cached:
		return StateKey(k, remote, key)
	case l.inLocalView(k):
		return wire.LocalViewStateKey(k, key)
	}
	return key
}
