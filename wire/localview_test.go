package wire

import (
	"net/netip"
	"strings"
	"testing"
)

func TestLocalViewKeys(t *testing.T) {
	for _, tc := range []struct {
		kind  Kind
		state string
		local string
	}{
		{IPCache, IPCachePrefixKey(netip.MustParsePrefix("10.2.1.7/32")), "cilium/local/ip/v1/default/10.2.1.7"},
		{IPCache, IPCachePrefixKey(netip.MustParsePrefix("fd00::/64")), "cilium/local/ip/v1/default/fd00::/64"},
		{Identities, IdentityKey(196613), "cilium/local/identities/v1/id/196613"},
	} {
		got, ok := LocalViewKey(tc.state)
		if !ok || got != tc.local {
			t.Errorf("LocalViewKey(%q) = %q, %v; want %q", tc.state, got, ok, tc.local)
		}
		if back := LocalViewStateKey(tc.kind, got); back != tc.state {
			t.Errorf("LocalViewStateKey(%v, %q) = %q, want %q", tc.kind, got, back, tc.state)
		}
	}
	if _, ok := LocalViewKey(NodeKey("east", "n1")); ok {
		t.Error("a node key has a local view key")
	}
	if k := LocalViewStateKey(IPCache, "cilium/local/identities/v1/id/5"); k != "cilium/local/identities/v1/id/5" {
		t.Errorf("a key outside the kind's view mapped to %q", k)
	}
	if k := LocalViewSyncedKey(IPCache); k != "cilium/local/.synced/ip/v1" {
		t.Errorf("LocalViewSyncedKey(IPCache) = %q", k)
	}
}

// FuzzLocalViewKey: a key with a local view key maps back to itself, and
// its view key is under the view's prefix of its kind.
func FuzzLocalViewKey(f *testing.F) {
	for _, k := range []string{"cilium/state/ip/v1/default/10.0.0.1", "cilium/state/identities/v1/id/5",
		"cilium/state/nodes/v1/east/n", "cilium/local/ip/v1/default/x", ""} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		lk, ok := LocalViewKey(key)
		if !ok {
			return
		}
		for _, k := range LocalViewKinds {
			if strings.HasPrefix(key, k.ListPrefix("")) {
				if !strings.HasPrefix(lk, LocalViewListPrefix(k)) || LocalViewStateKey(k, lk) != key {
					t.Fatalf("%q → %q → %q", key, lk, LocalViewStateKey(k, lk))
				}
				return
			}
		}
		t.Fatalf("%q has a view key %q but is of no view kind", key, lk)
	})
}
