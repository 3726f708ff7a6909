package meshapiserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/internal/testenv"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// incrementalWorld is a random cluster state edited one endpoint change at
// a time, as the file source delivers them.
type incrementalWorld struct {
	rng   *rand.Rand
	st    *statesource.State
	nextP int
	// file: only edits a state file can hold (endpoints on known nodes,
	// namespace labels from the namespaces list).
	file bool
}

func newIncrementalWorld(seed uint64) *incrementalWorld {
	w := &incrementalWorld{rng: rand.New(rand.NewPCG(seed, 7))}
	st := &statesource.State{
		Nodes: []statesource.Node{
			{Name: "n1", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.1")}},
			{Name: "n2", IPs: []netip.Addr{netip.MustParseAddr("192.168.2.2")}},
		},
	}
	for _, ns := range []string{"shop", "bank"} {
		for a := 0; a < 3; a++ {
			st.Services = append(st.Services, statesource.Service{Namespace: ns, Name: fmt.Sprint("svc", a),
				ClusterIP:   netip.AddrFrom4([4]byte{10, 96, byte(len(st.Services)), 1}),
				Ports:       []statesource.ServicePort{{Port: 80, TargetPort: 8080}},
				Selector:    map[string]string{"app": fmt.Sprint("a", a)},
				Annotations: map[string]string{wire.AnnotationGlobal: "true"}})
		}
	}
	st.Services[2].Annotations = map[string]string{wire.AnnotationGlobal: "true", wire.AnnotationShared: "false"}
	st.Services[4].Annotations = nil // not global
	w.st = st
	for i := 0; i < 40; i++ {
		st.Endpoints = append(st.Endpoints, w.endpoint())
	}
	return w
}

func (w *incrementalWorld) endpoint() *statesource.Endpoint {
	w.nextP++
	e := &statesource.Endpoint{Namespace: []string{"shop", "bank"}[w.rng.IntN(2)], Pod: fmt.Sprint("p", w.nextP),
		IP: netip.AddrFrom4([4]byte{10, 2, byte(w.nextP / 250), byte(w.nextP%250 + 1)})}
	w.edit(e)
	return e
}

// edit changes e at random: labels, readiness, node, sync label,
// service account, workload, topology.
func (w *incrementalWorld) edit(e *statesource.Endpoint) {
	r := w.rng
	e.Node = fmt.Sprint("n", 1+r.IntN(3)) // n3 is not a node
	if w.file {
		e.Node = fmt.Sprint("n", 1+r.IntN(2))
	}
	e.Labels = map[string]string{"app": fmt.Sprint("a", r.IntN(4))}
	if r.IntN(3) == 0 {
		e.Labels[SyncLabel] = []string{"true", "false"}[r.IntN(2)]
	}
	if r.IntN(3) == 0 && !w.file {
		e.NamespaceLabels = map[string]string{SyncLabel: "true"}
	} else {
		e.NamespaceLabels = nil
	}
	ready, serving := r.IntN(4) != 0, r.IntN(2) == 0
	e.Ready, e.Serving = &ready, nil
	if !ready {
		e.Serving = &serving
	}
	e.ServiceAccount = fmt.Sprint("sa", r.IntN(2))
	e.Workload = fmt.Sprint("Deployment/w", r.IntN(2))
	e.Zone, e.Hostname = fmt.Sprint("z", r.IntN(2)), ""
	if r.IntN(2) == 0 {
		e.Hostname = e.Pod
	}
}

// step makes a new state from the current one by 1–3 (or 12) endpoint edits (add,
// remove, relabel/readiness/node/...), with its Changes (each key touched
// once: its endpoint in the new state, or removed).
func (w *incrementalWorld) step() *statesource.State {
	next := *w.st
	next.Endpoints = slices.Clone(w.st.Endpoints)
	touched := map[string]bool{}
	n := 1 + w.rng.IntN(3)
	if w.rng.IntN(10) == 0 {
		n = 12 // many endpoints at once
	}
	for ; n > 0; n-- {
		switch op := w.rng.IntN(4); {
		case op == 0 || len(next.Endpoints) == 0:
			e := w.endpoint()
			next.Endpoints = append(next.Endpoints, e)
			touched[e.Key()] = true
		case op == 1:
			i := w.rng.IntN(len(next.Endpoints))
			touched[next.Endpoints[i].Key()] = true
			next.Endpoints = slices.Delete(next.Endpoints, i, i+1)
		default:
			i := w.rng.IntN(len(next.Endpoints))
			e := *next.Endpoints[i] // a delivered endpoint is never modified
			w.edit(&e)
			next.Endpoints[i] = &e
			touched[e.Key()] = true
		}
	}
	ch := &statesource.Changes{}
	for _, e := range next.Endpoints {
		if touched[e.Key()] {
			ch.Endpoints = append(ch.Endpoints, e)
			delete(touched, e.Key())
		}
	}
	for k := range touched {
		ch.RemovedEndpoints = append(ch.RemovedEndpoints, k)
	}
	next.Changes = ch
	w.st = &next
	return &next
}

// Publishing a change of some endpoints incrementally yields exactly the
// entries desired computes from scratch, after every step of random edits,
// in every export mode; a full publish in between rebuilds the bookkeeping,
// and two changes merged (the first never published) are one change.
func TestIncrementalEqualsFull(t *testing.T) {
	c := wire.Cluster{Name: "west", ID: 2, MaxConnectedClusters: 255}
	for _, mode := range ExportModes {
		t.Run(string(mode), func(t *testing.T) {
			ids, err := newIdentityAllocator(context.Background(), nil, c)
			if err != nil {
				t.Fatal(err)
			}
			w := newIncrementalWorld(uint64(len(mode)))
			cache := newEndpointCache()
			published, _, _, err := desired(c, w.st, mode, ids, cache)
			if err != nil {
				t.Fatal(err)
			}
			incrementals := 0
			for round := 0; round < 400; round++ {
				st := w.step()
				if w.rng.IntN(5) == 0 { // a change not published before the next
					st = withMergedChanges(st, w.step())
				}
				if w.rng.IntN(20) == 0 {
					st.Changes = nil
				}
				d, _, held, ok, err := desiredChanges(c, st, mode, ids, cache)
				if err != nil {
					t.Fatal(err)
				}
				if ok {
					incrementals++
					for k, v := range d.puts {
						published[k] = v
					}
					for k := range d.dels {
						delete(published, k)
					}
				} else if published, _, held, err = desired(c, st, mode, ids, cache); err != nil {
					t.Fatal(err)
				}
				want, _, wantHeld, err := desired(c, st, mode, ids, newEndpointCache())
				if err != nil {
					t.Fatal(err)
				}
				if diff := kvDiff(published, want); diff != "" {
					t.Fatalf("round %d (incremental %v): published differs from full:\n%s", round, ok, diff)
				}
				if held != wantHeld {
					t.Fatalf("round %d: held %d, want %d", round, held, wantHeld)
				}
				checkLocalView(t, c, published, st, mode)
			}
			if incrementals < 300 {
				t.Fatalf("only %d of 400 changes took the incremental path", incrementals)
			}
		})
	}
}

// checkLocalView checks the local view among kv, desired for st in mode:
// none with ExportAll; else every endpoint's ipcache entry, every state
// ipcache entry and identity also in the view with its value, and every
// identity the view's entries use in the view, valid for c.
func checkLocalView(t *testing.T, c wire.Cluster, kv desiredKV, st *statesource.State, mode ExportMode) {
	t.Helper()
	view, ips := map[string][]byte{}, 0
	for k, v := range kv {
		if strings.HasPrefix(k, wire.LocalViewPrefix) {
			view[k] = v
			if strings.HasPrefix(k, wire.LocalViewListPrefix(wire.IPCache)) {
				ips++
			}
		}
	}
	if !mode.localView() {
		if len(view) != 0 {
			t.Fatalf("mode %s publishes %d entries in the local view", mode, len(view))
		}
		return
	}
	if ips != len(st.Endpoints) {
		t.Fatalf("the local view holds %d ipcache entries, want one per endpoint (%d)", ips, len(st.Endpoints))
	}
	for k, v := range kv {
		if lk, ok := wire.LocalViewKey(k); ok && !bytes.Equal(view[lk], v) {
			t.Fatalf("%s is published as %s, its local view %s as %s", k, v, lk, view[lk])
		}
	}
	for k, v := range view {
		if err := checkEntry(c, k, v); err != nil {
			t.Fatalf("the local view's %s: %v", k, err)
		}
		if !strings.HasPrefix(k, wire.LocalViewListPrefix(wire.IPCache)) {
			continue
		}
		p, err := wire.DecodeIPIdentityPair(c, wire.LocalViewStateKey(wire.IPCache, k), v)
		if err != nil {
			t.Fatal(err)
		}
		if lk, _ := wire.LocalViewKey(wire.IdentityKey(p.ID)); view[lk] == nil {
			t.Fatalf("the local view's %s uses identity %d, which it does not hold", k, p.ID)
		}
	}
}

// kvDiff describes how got differs from want ("" when equal).
func kvDiff(got, want desiredKV) string {
	var out []string
	for k, v := range want {
		if g, ok := got[k]; !ok {
			out = append(out, "missing "+k)
		} else if !bytes.Equal(g, v) {
			out = append(out, fmt.Sprintf("%s: got %s, want %s", k, g, v))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			out = append(out, "extra "+k)
		}
	}
	sort.Strings(out)
	return fmt.Sprint(out)[1 : len(fmt.Sprint(out))-1]
}

// Through the apiserver and a JSON state file (whose source delivers
// endpoint edits as Changes), in every export mode: after each random edit
// the store holds exactly what desired computes from scratch for the file,
// and the edits were published as changes.
func TestIncrementalPublishesAsFull(t *testing.T) {
	for _, mode := range ExportModes {
		t.Run(string(mode), func(t *testing.T) {
			f := newFixture(t)
			f.exportMode = mode
			w := newIncrementalWorld(uint64(len(mode)) + 100)
			w.file = true
			w.st.Namespaces = []statesource.Namespace{{Name: "shop", Labels: map[string]string{SyncLabel: "true"}}}
			for i := range w.st.Endpoints {
				w.edit(w.st.Endpoints[i])
			}
			f.state = filepath.Join(f.dir, "east.json")
			writeState(t, f.state, w.st)
			f.start(t, "127.0.0.1:0")
			admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
			c := wire.Cluster{Name: "east", ID: 1, MaxConnectedClusters: 255}
			for round := 0; round < 25; round++ {
				st := w.step()
				writeState(t, f.state, st)
				testenv.WaitFor(t, 10*time.Second, "the store to hold the state's entries", func() bool {
					return kvDiff(storeEntries(t, admin, c), fileDesired(t, f, c, mode)) == ""
				})
			}
			if n := gather(t, f.srv)["clustermesh_apiserver_changes_published_total"]; n < 10 {
				t.Fatalf("%v edits published as changes, want most of 25", n)
			}
		})
	}
}

// writeState writes st as a JSON state file, atomically.
func writeState(t testing.TB, path string, st *statesource.State) {
	t.Helper()
	b, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, string(b))
}

// storeEntries is what the store holds under cluster c's state prefixes
// and in the local view (but its canaries).
func storeEntries(t *testing.T, cli *clientv3.Client, c wire.Cluster) desiredKV {
	t.Helper()
	out := desiredKV{}
	prefixes := []string{wire.LocalViewListPrefix(wire.IPCache), wire.LocalViewListPrefix(wire.Identities)}
	for _, k := range wire.PublishedKinds {
		prefixes = append(prefixes, k.ListPrefix(c.Name))
	}
	for _, prefix := range prefixes {
		resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			out[string(kv.Key)] = kv.Value
		}
	}
	return out
}

// fileDesired is desired computed from scratch for f's state file, with
// the identities the apiserver saved.
func fileDesired(t *testing.T, f *fixture, c wire.Cluster, mode ExportMode) desiredKV {
	t.Helper()
	b, err := os.ReadFile(f.state)
	if err != nil {
		t.Fatal(err)
	}
	st, err := statesource.Parse(f.state, b)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := newIdentityAllocator(context.Background(), IdentityFile{Path: f.idsFile}, c)
	if err != nil {
		t.Fatal(err)
	}
	kv, _, _, err := desired(c, st, mode, ids, newEndpointCache())
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// publishChanges applies publish's checks to the keys of a change: an
// entry agents would reject is refused and counted, a key whose new value
// is refused keeps its published value, puts and deletes reach the store,
// and a refused key no longer desired is no longer reported.
func TestPublishChangesRefusesAsPublish(t *testing.T) {
	f := newFixture(t)
	f.start(t, "127.0.0.1:0")
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	ctx := context.Background()
	south := wire.Cluster{Name: "south", ID: 3, MaxConnectedClusters: 255}
	lease, err := admin.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	p := newPublisher(admin, south, false, f.srv.cfg.Logger, newTxnLatency())
	p.lease = lease.ID
	first, _ := wire.IdentityRange(south.ID, south.MaxConnectedClusters)
	idX, idY := wire.IdentityKey(first), wire.IdentityKey(first+1)
	ipA := wire.IPCachePrefixKey(netip.MustParsePrefix("10.33.0.1/32"))
	pair := func(id uint32) []byte {
		b, err := wire.EncodeIPIdentityPair(&wire.IPIdentityPair{IP: netip.MustParseAddr("10.33.0.1"), ID: id})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	labels := func(s string) []byte {
		return wire.EncodeIdentity(wire.Identity{Labels: wire.Labels{{Source: "k8s", Key: "app", Value: s}, {Source: "k8s", Key: wire.ClusterLabel, Value: south.Name}}})
	}
	notUTF8 := []byte{0xff, 0xfe}
	if err := p.publishChanges(ctx, map[string][]byte{ipA: pair(first)}, nil); err == nil {
		t.Fatal("a change published before the whole state")
	}
	if err := p.publish(ctx, desiredKV{ipA: pair(first), idX: labels("x")}); err != nil {
		t.Fatal(err)
	}
	step := func(puts map[string][]byte, dels []string, want desiredKV, refused int) {
		t.Helper()
		ds := map[string]struct{}{}
		for _, k := range dels {
			ds[k] = struct{}{}
		}
		if err := p.publishChanges(ctx, puts, ds); err != nil {
			t.Fatal(err)
		}
		got := desiredKV{}
		for _, k := range []string{ipA, idX, idY} {
			if resp, err := admin.Get(ctx, k); err != nil {
				t.Fatal(err)
			} else if len(resp.Kvs) == 1 {
				got[k] = resp.Kvs[0].Value
			}
		}
		if diff := kvDiff(got, want); diff != "" {
			t.Fatalf("store: %s", diff)
		}
		if diff := kvDiff(p.published, want); diff != "" {
			t.Fatalf("published: %s", diff)
		}
		if p.stats.Refused != refused {
			t.Fatalf("%d refused, want %d", p.stats.Refused, refused)
		}
	}
	step(map[string][]byte{idY: notUTF8}, nil, desiredKV{ipA: pair(first), idX: labels("x")}, 1)
	step(map[string][]byte{ipA: pair(first + 1), idX: notUTF8, idY: notUTF8}, nil, desiredKV{ipA: pair(first + 1), idX: labels("x")}, 2)
	step(map[string][]byte{idX: labels("x2")}, []string{idY}, desiredKV{ipA: pair(first + 1), idX: labels("x2")}, 0)
	step(nil, []string{ipA, idX}, desiredKV{}, 0)
	if p.refusals[wire.Reason(wire.ErrInvalidLabels)] != 2 {
		t.Errorf("refusals by reason %v, want the two values of invalid labels counted once each", p.refusals)
	}
}
