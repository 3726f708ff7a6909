package agentsync

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/wire"
)

// Only the local cluster's own apiserver is read from the local view, and
// only when its config announces it and it is not a cache's copy; nodes
// and services stay under cilium/state/.
func TestLocalViewLayout(t *testing.T) {
	r, _, _ := lwRemote(t, 0)
	self := newRemote(r.agent, "east", RemoteConfig{}, nil)
	view := wire.ClusterConfig{Capabilities: wire.Capabilities{LocalView: true}}
	for _, tc := range []struct {
		r    *remote
		cfg  wire.ClusterConfig
		want bool
	}{
		{self, view, true},
		{self, wire.ClusterConfig{}, false},
		{self, wire.ClusterConfig{Capabilities: wire.Capabilities{LocalView: true, Cached: true}}, false},
		{r, view, false}, // a peer's view is not ours to read
	} {
		if got := tc.r.layoutFor(tc.cfg).local; got != tc.want {
			t.Errorf("remote %s with %+v: local view %v, want %v", tc.r.name, tc.cfg.Capabilities, got, tc.want)
		}
	}
	lay := layout{local: true}
	for _, c := range []struct {
		kind                    wire.Kind
		prefix, canary, key, as string
	}{
		{wire.IPCache, "cilium/local/ip/v1/default/", "cilium/local/.synced/ip/v1",
			"cilium/local/ip/v1/default/10.1.0.7", "cilium/state/ip/v1/default/10.1.0.7"},
		{wire.Identities, "cilium/local/identities/v1/id/", "cilium/local/.synced/identities/v1",
			"cilium/local/identities/v1/id/65540", "cilium/state/identities/v1/id/65540"},
		{wire.Nodes, "cilium/state/nodes/v1/east/", "cilium/synced/east/cilium/state/nodes/v1",
			"cilium/state/nodes/v1/east/n1", "cilium/state/nodes/v1/east/n1"},
	} {
		if p, k, s := lay.listPrefix(c.kind, "east"), lay.canaryKey("east", c.kind), lay.stateKey(c.kind, "east", c.key); p != c.prefix || k != c.canary || s != c.as {
			t.Errorf("%s in the local view: list %q, canary %q, %q read as %q; want %q, %q, %q", c.kind, p, k, c.key, s, c.prefix, c.canary, c.as)
		}
	}
	out, err := CachedClusterConfig([]byte(`{"id":1,"capabilities":{"syncedCanaries":true,"localView":true}}`))
	if err != nil || strings.Contains(string(out), "localView") {
		t.Errorf("a cache republishes the local view's announcement: %s, %v (it cannot read the view)", out, err)
	}
}

// The ipcache read from the local view: nothing before the view's own
// canary (the state's is not enough), then every entry of the view, none
// of cilium/state/; a view key that is not a canonical state key is
// rejected as the state key would be; a delete in the view is applied.
func TestListReadsTheLocalView(t *testing.T) {
	cli := lwEtcd(t)
	r, sink, log := lwRemote(t, 0)
	ctx, cancel := context.WithTimeout(context.Background(), lwWait)
	defer cancel()
	put := func(key, ip string) {
		t.Helper()
		if _, err := cli.Put(ctx, key, fmt.Sprintf(`{"IP":%q,"ID":131100}`, ip)); err != nil {
			t.Fatal(err)
		}
	}
	viewKey := func(ip string) string {
		k, _ := wire.LocalViewKey(wire.IPCacheKey(ip))
		return k
	}
	put(wire.IPCacheKey("10.2.0.1"), "10.2.0.1")
	put(wire.IPCacheKey("10.2.0.99"), "10.2.0.99") // in the state only: not read
	for _, ip := range []string{"10.2.0.1", "10.2.0.2", "10.2.0.3"} {
		put(viewKey(ip), ip)
	}
	put(viewKey("10.2.0.04"), "10.2.0.4") // not the canonical spelling
	lwCanary(t, cli)

	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	id := lwID(t, cli)
	go func() { done <- r.kinds[wire.IPCache].run(runCtx, cli, lwWest, true, id, layout{local: true}) }()
	t.Cleanup(func() {
		stop()
		<-done
	})
	testenv.WaitFor(t, lwWait, "the kind waiting for the view's canary", func() bool { return log.saw("waiting for synced canary") })
	if n := sink.count(); n != 0 {
		t.Fatalf("%d entries handed on before the view's canary", n)
	}
	if _, err := cli.Put(ctx, wire.LocalViewSyncedKey(wire.IPCache), "now"); err != nil {
		t.Fatal(err)
	}
	has := func(ips ...string) bool {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		for _, ip := range ips {
			if !sink.ips[netip.MustParsePrefix(ip+"/32")] {
				return false
			}
		}
		return len(sink.ips) == len(ips)
	}
	testenv.WaitFor(t, lwWait, "the view's three entries", func() bool { return has("10.2.0.1", "10.2.0.2", "10.2.0.3") })
	if n := r.snapshot().Rejected; len(n) == 0 {
		t.Errorf("a non-canonical view key was not rejected: %v", n)
	}
	if _, err := cli.Delete(ctx, viewKey("10.2.0.2")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, lwWait, "the view's delete applied", func() bool { return has("10.2.0.1", "10.2.0.3") })
	if _, err := cli.Delete(ctx, wire.IPCacheKey("10.2.0.1")); err != nil { // scoped out of the state: no matter
		t.Fatal(err)
	}
	put(viewKey("10.2.0.5"), "10.2.0.5")
	testenv.WaitFor(t, lwWait, "the view's put applied", func() bool { return has("10.2.0.1", "10.2.0.3", "10.2.0.5") })
}
