package agentsync

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/wire"
)

// The cache keys are Cilium's KVStoreMesh's, exactly
// (pkg/clustermesh/kvstoremesh/reflector/cell.go, v1.20.2).
func TestCacheLayoutIsCiliums(t *testing.T) {
	for _, c := range []struct {
		kind        wire.Kind
		state, want string
	}{
		{wire.Nodes, "cilium/state/nodes/v1/west/node-1", "cilium/cache/nodes/v1/west/node-1"},
		{wire.Services, "cilium/state/services/v1/west/shop/checkout", "cilium/cache/services/v1/west/shop/checkout"},
		{wire.IPCache, "cilium/state/ip/v1/default/10.2.1.5", "cilium/cache/ip/v1/west/10.2.1.5"},
		{wire.IPCache, "cilium/state/ip/v1/default/fd00::/64", "cilium/cache/ip/v1/west/fd00::/64"},
		{wire.Identities, "cilium/state/identities/v1/id/131077", "cilium/cache/identities/v1/west/id/131077"},
	} {
		got, err := CacheKey(c.kind, "west", c.state)
		if err != nil || got != c.want {
			t.Errorf("CacheKey(%s, %q) = %q, %v; want %q", c.kind, c.state, got, err, c.want)
		}
		if back := StateKey(c.kind, "west", got); back != c.state {
			t.Errorf("StateKey(%s, %q) = %q, want %q", c.kind, got, back, c.state)
		}
	}
	for k, want := range map[wire.Kind]string{
		wire.Nodes: "cilium/synced/west/cilium/cache/nodes/v1", wire.Services: "cilium/synced/west/cilium/cache/services/v1",
		wire.IPCache: "cilium/synced/west/cilium/cache/ip/v1", wire.Identities: "cilium/synced/west/cilium/cache/identities/v1",
	} {
		if got := CacheSyncedKey("west", k); got != want {
			t.Errorf("CacheSyncedKey(west, %s) = %q, want %q", k, got, want)
		}
	}
	if _, err := CacheKey(wire.Nodes, "west", "cilium/state/nodes/v1/east/node-1"); err == nil {
		t.Error("another cluster's node key mapped to west's cache")
	}
	if got := StateKey(wire.Nodes, "west", "cilium/cache/nodes/v1/west2/n"); got != "cilium/cache/nodes/v1/west2/n" {
		t.Errorf("a key of cluster west2 mapped as west's: %q", got)
	}
}

func TestCachedClusterConfigKeepsFields(t *testing.T) {
	raw := []byte(`{"id":7,"capabilities":{"maxConnectedClusters":511,"endpointSlicesExportMode":"services-and-endpointslices","serviceExportsEnabled":true}}`)
	out, err := CachedClusterConfig(raw)
	if err != nil {
		t.Fatal(err)
	}
	c, cfg, err := wire.DecodeClusterConfig("west", 511, out)
	if err != nil {
		t.Fatalf("the cached config does not decode: %v (%s)", err, out)
	}
	if c.ID != 7 || !cfg.Capabilities.Cached || !cfg.Capabilities.SyncedCanaries || cfg.Capabilities.MaxConnectedClusters != 511 ||
		!strings.Contains(string(out), `"endpointSlicesExportMode":"services-and-endpointslices"`) {
		t.Errorf("cached config %s", out)
	}
	again, _ := CachedClusterConfig(out)
	if string(again) != string(out) {
		t.Errorf("rewriting a cached config changes it: %s → %s (agents would resync on every cache restart)", out, again)
	}
}

func FuzzCacheKey(f *testing.F) {
	f.Add(0, "west", "cilium/state/nodes/v1/west/n")
	f.Add(2, "west", "cilium/state/ip/v1/default/10.0.0.1")
	f.Add(1, "a", "cilium/state/identities/v1/id/5")
	f.Add(3, "east", "cilium/state/services/v1/east/ns/n")
	f.Fuzz(func(t *testing.T, kind int, remote, key string) {
		k := wire.Kinds[uint(kind)%uint(len(wire.Kinds))]
		ck, err := CacheKey(k, remote, key)
		if err != nil {
			return
		}
		if !strings.HasPrefix(ck, CacheListPrefix(k, remote)) {
			t.Fatalf("cache key %q outside %q", ck, CacheListPrefix(k, remote))
		}
		if back := StateKey(k, remote, ck); back != key {
			t.Fatalf("round trip %q → %q → %q", key, ck, back)
		}
	})
}

func FuzzCachedClusterConfig(f *testing.F) {
	f.Add([]byte(`{"id":3,"capabilities":{"syncedCanaries":true}}`))
	f.Add([]byte(`{"id":3}`))
	f.Add([]byte(`{"capabilities":null}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		out, err := CachedClusterConfig(raw)
		if err != nil {
			return
		}
		var cfg wire.ClusterConfig
		if err := json.Unmarshal(out, &cfg); err == nil && !cfg.Capabilities.Cached {
			t.Fatalf("%s → %s: not cached", raw, out)
		}
	})
}
