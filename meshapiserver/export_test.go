package meshapiserver

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// exportState has, in namespace shop (no namespace label): two checkout
// pods behind the global service shop/checkout (checkout-2 not ready), a
// frontend labelled clustermesh.io/sync: "true", a db pod behind a service
// that is not global; in namespace team (labelled clustermesh.io/sync:
// "true"): api-1, and api-2 whose pod label says "false".
func exportState() *statesource.State {
	no := false
	ep := func(ns, pod, ip, app string, podSync string) *statesource.Endpoint {
		e := &statesource.Endpoint{Namespace: ns, Pod: pod, Node: "n1", IP: netip.MustParseAddr(ip),
			Labels: map[string]string{"app": app}}
		if podSync != "" {
			e.Labels[SyncLabel] = podSync
		}
		if ns == "team" {
			e.NamespaceLabels = map[string]string{SyncLabel: "true"}
		}
		return e
	}
	st := &statesource.State{
		Nodes: []statesource.Node{{Name: "n1", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.1")},
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}}},
		Endpoints: []*statesource.Endpoint{
			ep("shop", "checkout-1", "10.2.0.1", "checkout", ""),
			ep("shop", "checkout-2", "10.2.0.2", "checkout", ""),
			ep("shop", "frontend-1", "10.2.0.3", "frontend", "true"),
			ep("shop", "db-1", "10.2.0.4", "db", ""),
			ep("team", "api-1", "10.2.0.5", "api", ""),
			ep("team", "api-2", "10.2.0.6", "api", "false"),
		},
		Services: []statesource.Service{
			{Namespace: "shop", Name: "checkout", ClusterIP: netip.MustParseAddr("172.20.0.1"),
				Ports:       []statesource.ServicePort{{Port: 80, TargetPort: 8080, Protocol: "TCP"}},
				Selector:    map[string]string{"app": "checkout"},
				Annotations: map[string]string{wire.AnnotationGlobal: "true"}},
			{Namespace: "shop", Name: "db", ClusterIP: netip.MustParseAddr("172.20.0.2"),
				Ports:    []statesource.ServicePort{{Port: 5432, Protocol: "TCP"}},
				Selector: map[string]string{"app": "db"}},
		},
	}
	st.Endpoints[1].Ready = &no
	return st
}

// published is what a desired set says: the addresses of its ipcache
// entries, the apps of its identities, each service's backends.
type published struct {
	ips, apps []string
	backends  map[string][]string
}

func readPublished(t *testing.T, c wire.Cluster, kv desiredKV) published {
	t.Helper()
	p := published{backends: map[string][]string{}}
	for k, v := range kv {
		switch {
		case strings.HasPrefix(k, wire.IPCachePrefix+"/"):
			pair, err := wire.DecodeIPIdentityPair(c, k, v)
			if err != nil {
				t.Fatal(err)
			}
			p.ips = append(p.ips, pair.IP.String())
		case strings.HasPrefix(k, wire.IdentitiesPrefix+"/"):
			id, err := wire.DecodeIdentity(c, k, v)
			if err != nil {
				t.Fatal(err)
			}
			app, _ := id.Labels.Get("app")
			p.apps = append(p.apps, app)
		case strings.HasPrefix(k, wire.ServicesPrefix+"/"):
			svc, err := wire.DecodeService(c, k, v)
			if err != nil {
				t.Fatal(err)
			}
			p.backends[svc.Name] = slices.Sorted(maps.Keys(svc.Backends))
		}
	}
	slices.Sort(p.ips)
	slices.Sort(p.apps)
	return p
}

// localView is the local view among kv, under the state keys its keys
// stand for.
func localView(kv desiredKV) desiredKV {
	out := desiredKV{}
	for k, v := range kv {
		for _, kind := range wire.LocalViewKinds {
			if strings.HasPrefix(k, wire.LocalViewListPrefix(kind)) {
				out[wire.LocalViewStateKey(kind, k)] = v
			}
		}
	}
	return out
}

func TestExportModes(t *testing.T) {
	c := wire.Cluster{Name: "west", ID: 2, MaxConnectedClusters: 255}
	for _, tc := range []struct {
		mode     ExportMode
		ips      []string
		apps     []string
		backends []string // of shop/checkout
	}{
		{ExportAll, []string{"10.2.0.1", "10.2.0.2", "10.2.0.3", "10.2.0.4", "10.2.0.5", "10.2.0.6"},
			// api-2's pod label is one of its identity's labels.
			[]string{"api", "api", "checkout", "db", "frontend"}, []string{"10.2.0.1"}},
		// checkout-2 is not ready: no backend, but a peer knows its identity.
		{ExportGlobalServices, []string{"10.2.0.1", "10.2.0.2"}, []string{"checkout"}, []string{"10.2.0.1"}},
		// Nothing of the global service opted in: it has no backends.
		{ExportOptIn, []string{"10.2.0.3", "10.2.0.5"}, []string{"api", "frontend"}, nil},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			ids, err := newIdentityAllocator(context.Background(), nil, c)
			if err != nil {
				t.Fatal(err)
			}
			kv, _, held, err := desired(c, exportState(), tc.mode, ids, newEndpointCache())
			if err != nil {
				t.Fatal(err)
			}
			p := readPublished(t, c, kv)
			if !slices.Equal(p.ips, tc.ips) || !slices.Equal(p.apps, tc.apps) || !slices.Equal(p.backends["checkout"], tc.backends) {
				t.Errorf("published ipcache %v, identities %v, checkout backends %v; want %v, %v, %v",
					p.ips, p.apps, p.backends["checkout"], tc.ips, tc.apps, tc.backends)
			}
			if _, ok := p.backends["checkout"]; !ok || len(p.backends) != 1 {
				t.Errorf("published services %v, want shop/checkout alone", p.backends)
			}
			if held != 6-len(tc.ips) {
				t.Errorf("held back %d endpoints, want %d", held, 6-len(tc.ips))
			}
			if n := strings.Count(strings.Join(slices.Collect(maps.Keys(kv)), " "), wire.NodesPrefix+"/"); n != 1 {
				t.Errorf("%d nodes published, want 1 (nodes are always exported)", n)
			}
			// The local view: every endpoint and identity when some are
			// held back, as ExportAll publishes them; none otherwise.
			v := readPublished(t, c, localView(kv))
			all := []string{"10.2.0.1", "10.2.0.2", "10.2.0.3", "10.2.0.4", "10.2.0.5", "10.2.0.6"}
			if tc.mode == ExportAll && (len(v.ips) != 0 || len(v.apps) != 0) {
				t.Errorf("ExportAll publishes a local view: %v, %v", v.ips, v.apps)
			}
			if tc.mode != ExportAll && (!slices.Equal(v.ips, all) || !slices.Equal(v.apps, []string{"api", "api", "checkout", "db", "frontend"})) {
				t.Errorf("local view: ipcache %v, identities %v; want every endpoint's", v.ips, v.apps)
			}
		})
	}
}

// An endpoint that leaves the scope (relabelled) leaves the published set,
// and comes back when it returns; the long-lived cache agrees with a fresh
// one at every step.
func TestExportOptInFollowsLabels(t *testing.T) {
	c := wire.Cluster{Name: "west", ID: 2, MaxConnectedClusters: 255}
	ids, err := newIdentityAllocator(context.Background(), nil, c)
	if err != nil {
		t.Fatal(err)
	}
	cache := newEndpointCache()
	st := exportState()
	for step, change := range []struct {
		do   func(st *statesource.State)
		want []string
	}{
		{func(*statesource.State) {}, []string{"10.2.0.3", "10.2.0.5"}},
		{func(st *statesource.State) { st.Endpoints[2].Labels = map[string]string{"app": "frontend"} }, []string{"10.2.0.5"}},
		{func(st *statesource.State) { st.Endpoints[5].Labels = map[string]string{"app": "api"} }, []string{"10.2.0.5", "10.2.0.6"}},
		{func(st *statesource.State) { st.Endpoints[0].NamespaceLabels = map[string]string{SyncLabel: "TRUE"} }, []string{"10.2.0.1", "10.2.0.5", "10.2.0.6"}},
	} {
		change.do(st)
		got, _, _, err := desired(c, st, ExportOptIn, ids, cache)
		if err != nil {
			t.Fatal(err)
		}
		fresh, _, _, err := desired(c, st, ExportOptIn, ids, newEndpointCache())
		if err != nil {
			t.Fatal(err)
		}
		if p := readPublished(t, c, got); !slices.Equal(p.ips, change.want) {
			t.Errorf("step %d: published %v, want %v", step, p.ips, change.want)
		}
		if len(got) != len(fresh) {
			t.Fatalf("step %d: %d entries with the cache, %d from scratch", step, len(got), len(fresh))
		}
		for k, v := range fresh {
			if !bytes.Equal(got[k], v) {
				t.Fatalf("step %d: %s = %s with the cache, %s from scratch", step, k, got[k], v)
			}
		}
	}
}

func TestParseExportMode(t *testing.T) {
	for in, want := range map[string]ExportMode{"": ExportAll, "all": ExportAll, "Global-Services": ExportGlobalServices, "opt-in": ExportOptIn} {
		if got, err := ParseExportMode(in); err != nil || got != want {
			t.Errorf("ParseExportMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseExportMode("some"); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "global-services") {
		t.Errorf("ParseExportMode(some) = %v, want ErrInvalidConfig naming the modes", err)
	}
	var m ExportMode
	if err := m.Set("opt-in"); err != nil || m.String() != "opt-in" {
		t.Errorf("Set(opt-in): %v, %q", err, m.String())
	}
}

// On a real store, read as a peer: everything with ExportAll; a restart
// in global-services mode (on the same data directory) removes what is no
// longer exported — cart-a and its identity, not behind a global service —
// and keeps the checkout identity's number; status and metrics say what
// was held back. The cluster's own user reads everything in the local
// view, with its canaries, which a peer may not read; a restart with
// ExportAll removes the view.
func TestExportModeOnRealStore(t *testing.T) {
	f := newFixture(t)
	f.dataDir = filepath.Join(f.dir, "data")
	f.start(t, "127.0.0.1:0")
	checkNoLocalView(t, f)
	peer := clientFor(t, f.srv.ClientURL(), f.west.RemoteCert(), f.west.RemoteKey(), f.west.CAFile())
	ipcacheOf := func() []string {
		resp, err := get(t, peer, wire.IPCachePrefix+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, kv := range resp.Kvs {
			out = append(out, string(kv.Key[strings.LastIndex(string(kv.Key), "/")+1:]))
		}
		slices.Sort(out)
		return out
	}
	if got := ipcacheOf(); !slices.Equal(got, []string{"10.1.1.10", "10.1.1.11", "10.1.1.12"}) {
		t.Fatalf("exporting all, a peer reads ipcache %v", got)
	}
	before := identityKeys(t, peer)

	url := f.srv.ClientURL()
	f.stop(t)
	f.exportMode = ExportGlobalServices
	f.start(t, strings.TrimPrefix(url, "https://"))
	peer = clientFor(t, f.srv.ClientURL(), f.west.RemoteCert(), f.west.RemoteKey(), f.west.CAFile())
	if got := ipcacheOf(); !slices.Equal(got, []string{"10.1.1.10", "10.1.1.11"}) {
		t.Errorf("exporting global services, a peer reads ipcache %v, want the two checkouts", got)
	}
	after := identityKeys(t, peer)
	for k, v := range after {
		if !strings.Contains(v, "app=checkout") || before[k] != v {
			t.Errorf("exporting global services, a peer reads identities %v (before %v), want the checkout one, same number", after, before)
		}
	}
	if s := f.srv.Status(); s.ExportMode != ExportGlobalServices || s.EndpointsNotExported != 1 || len(after) != 1 {
		t.Errorf("status: mode %q, %d not exported, %d identities; want global-services, 1, 1", s.ExportMode, s.EndpointsNotExported, len(after))
	}
	if got := gather(t, f.srv)["clustermesh_apiserver_endpoints_not_exported"]; got != 1 {
		t.Errorf("clustermesh_apiserver_endpoints_not_exported = %v, want 1", got)
	}

	own := f.userClient(t, RemoteUser("east"))
	resp, err := get(t, own, wire.LocalViewPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("the cluster's own user reading the local view: %v", err)
	}
	view := map[string]string{}
	for _, kv := range resp.Kvs {
		view[string(kv.Key)] = string(kv.Value)
	}
	for _, ip := range []string{"10.1.1.10", "10.1.1.11", "10.1.1.12"} {
		if view[wire.LocalViewListPrefix(wire.IPCache)+ip] == "" {
			t.Errorf("the local view %v lacks %s", slices.Sorted(maps.Keys(view)), ip)
		}
	}
	for _, k := range wire.LocalViewSyncedKeys() {
		if view[k] == "" {
			t.Errorf("the local view lacks its canary %s", k)
		}
	}
	if n := len(view) - len(wire.LocalViewKinds); f.srv.Status().LocalViewEntries != n || n != 3+2 {
		t.Errorf("status: %d entries in the local view, the store holds %d; want 3 endpoints and 2 identities", f.srv.Status().LocalViewEntries, n)
	}
	if got := gather(t, f.srv)["clustermesh_apiserver_local_view_entries"]; got != 5 {
		t.Errorf("clustermesh_apiserver_local_view_entries = %v, want 5", got)
	}
	if cfg := clusterConfig(t, own); !cfg.Capabilities.LocalView {
		t.Errorf("the cluster config %+v does not say the local view exists", cfg)
	}
	for _, key := range []string{wire.LocalViewPrefix, wire.LocalViewSyncedKeys()[0]} {
		if _, err := get(t, peer, key, clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("a peer reading %s: %v, want permission denied", key, err)
		}
	}

	f.stop(t)
	f.exportMode = ExportAll
	f.start(t, strings.TrimPrefix(url, "https://"))
	checkNoLocalView(t, f)
}

// checkNoLocalView: the store holds nothing under the local view's prefix,
// and the cluster config does not announce one.
func checkNoLocalView(t *testing.T, f *fixture) {
	t.Helper()
	own := f.userClient(t, RemoteUser("east"))
	if resp, err := get(t, own, wire.LocalViewPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly()); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("exporting all, the local view holds %v (%v), want nothing", resp.Kvs, err)
	}
	if cfg := clusterConfig(t, own); cfg.Capabilities.LocalView {
		t.Errorf("exporting all, the cluster config %+v announces a local view", cfg)
	}
	if n := f.srv.Status().LocalViewEntries; n != 0 {
		t.Errorf("exporting all, status counts %d local view entries", n)
	}
}

// clusterConfig reads east's cluster config.
func clusterConfig(t *testing.T, cli *clientv3.Client) wire.ClusterConfig {
	t.Helper()
	resp, err := get(t, cli, wire.ClusterConfigKey("east"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("reading the cluster config: %v %v", resp, err)
	}
	_, cfg, err := wire.DecodeClusterConfig("east", 255, resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// FuzzParseExportMode: every input is a known mode (which parses back to
// itself) or ErrInvalidConfig.
func FuzzParseExportMode(f *testing.F) {
	for _, s := range []string{"", "all", "ALL", "global-services", "opt-in", "opt_in", "none", "all ", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseExportMode(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) || m != "" {
				t.Fatalf("ParseExportMode(%q) = %q, %v", s, m, err)
			}
			return
		}
		if !slices.Contains(ExportModes, m) {
			t.Fatalf("ParseExportMode(%q) = %q, not a mode", s, m)
		}
		if back, err := ParseExportMode(string(m)); err != nil || back != m {
			t.Fatalf("ParseExportMode(%q) = %q, %v; want %q", m, back, err, m)
		}
	})
}
