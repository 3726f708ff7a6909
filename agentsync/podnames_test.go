package agentsync

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/wire"
)

// Names come back as stored; freed ones are garbage that a rebuild drops;
// what cannot be kept is refused with 0, never stored wrong.
func TestNameArena(t *testing.T) {
	var a nameArena
	deploy, sts := wire.Workload{Kind: "Deployment", Name: "checkout"}, wire.Workload{Kind: "StatefulSet", Name: "db"}
	r1, r2 := a.add("shop", "checkout-7d9f8b6c5d-x2k4p", deploy), a.add("web", "frontend-1", wire.Workload{})
	r3 := a.add("shop", "checkout-0", sts) // not a prefix of the pod's name: left out
	r4 := a.add("data", "db-0", sts)
	for r, want := range map[podRef]PodName{r1: {"shop", "checkout-7d9f8b6c5d-x2k4p", deploy}, r2: {"web", "frontend-1", wire.Workload{}},
		r3: {"shop", "checkout-0", wire.Workload{}}, r4: {"data", "db-0", sts}} {
		if got, ok := a.get(r); !ok || got != want {
			t.Errorf("get(%x) = %+v, %v; want %+v", r, got, ok, want)
		}
	}
	if len(a.nss) != 4 {
		t.Errorf("namespaces %q, want shop, web and data once each", a.nss[1:])
	}
	if _, ok := a.get(0); ok {
		t.Error("reference 0 names a pod")
	}
	for _, bad := range []string{"", strings.Repeat("x", maxNameLen+1)} {
		if r := a.add("shop", bad, wire.Workload{}); r != 0 {
			t.Errorf("add of a %d-byte name = %x, want 0", len(bad), r)
		}
	}
	a.free(r1)
	if a.garbage != len("checkout-7d9f8b6c5d-x2k4p") || a.wasteful() {
		t.Errorf("garbage %d, wasteful %v: a little garbage is kept", a.garbage, a.wasteful())
	}
	for i := 0; i < 10000; i++ {
		a.free(a.add("bulk", "pod-with-a-long-name-0123456789", wire.Workload{}))
	}
	if !a.wasteful() {
		t.Error("an arena of mostly garbage is not worth a compaction")
	}
}

func FuzzNameArena(f *testing.F) {
	f.Add("shop", "checkout-0", "web", "frontend-1", "checkout")
	f.Fuzz(func(t *testing.T, ns1, n1, ns2, n2, w string) {
		var a nameArena
		r1, r2 := a.add(ns1, n1, wire.Workload{Kind: "Deployment", Name: w}), a.add(ns2, n2, wire.Workload{})
		for _, c := range []struct {
			r      podRef
			ns, nm string
		}{{r1, ns1, n1}, {r2, ns2, n2}} {
			got, ok := a.get(c.r)
			if c.r == 0 {
				if ok {
					t.Fatalf("reference 0 named %+v", got)
				}
				continue
			}
			if !ok || got.Namespace != c.ns || got.Name != c.nm || !strings.HasPrefix(got.Name, got.Workload.Name) {
				t.Fatalf("get = %+v, %v; want %s/%s", got, ok, c.ns, c.nm)
			}
		}
	})
}

// A store whose entries mostly went rebuilds its names, and every entry
// left keeps its own.
func TestIPCacheStoreCompactsNames(t *testing.T) {
	r, _, _ := lwRemote(t, 0)
	ks := r.kinds[wire.IPCache]
	ks.mu.Lock()
	defer ks.mu.Unlock()
	s := ks.store.(*ipcacheStore)
	name := func(i int) string { return fmt.Sprintf("checkout-7d9f8b6c5d-%06d", i) }
	key := func(i int) string { return wire.IPCacheKey(fmt.Sprintf("10.2.%d.%d", i/250, 1+i%250)) }
	for i := 0; i < 10000; i++ {
		v := fmt.Sprintf(`{"IP":"10.2.%d.%d","ID":131100,"K8sNamespace":"shop","K8sPodName":%q,"clustermesh.io/workload":"Deployment/checkout"}`, i/250, 1+i%250, name(i))
		if err := s.apply(key(i), []byte(v), 1); err != nil {
			t.Fatal(err)
		}
	}
	full := len(s.names.buf)
	for i := 0; i < 9000; i++ {
		s.remove(key(i))
	}
	if len(s.names.buf) >= full/2 || s.names.garbage > len(s.names.buf) {
		t.Errorf("names: %d bytes with %d garbage after 9,000 of 10,000 entries went (%d before)", len(s.names.buf), s.names.garbage, full)
	}
	for _, i := range []int{9000, 9500, 9999} {
		if n, ok := s.podName(netip.MustParseAddr(fmt.Sprintf("10.2.%d.%d", i/250, 1+i%250))); !ok || n.Name != name(i) || n.Namespace != "shop" ||
			n.Workload != (wire.Workload{Kind: "Deployment", Name: "checkout"}) {
			t.Errorf("entry %d names %+v, %v", i, n, ok)
		}
	}
}
