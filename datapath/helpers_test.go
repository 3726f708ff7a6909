package datapath

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// testPinDir returns a fresh pin directory under /sys/fs/bpf (not created),
// removed with whatever is pinned in it when the test ends (after the
// test's own cleanups, which may close maps pinned there).
func testPinDir(t testing.TB) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(bpfmap.BPFFSRoot, "cm-test-"+hex.EncodeToString(b[:]))
	t.Cleanup(func() {
		if err := RemovePins(dir); err != nil {
			t.Errorf("leftover pins: %v", err)
		}
	})
	return dir
}

// smallConfig keeps the preallocated hash maps small in tests.
func smallConfig(dir string) Config {
	return Config{PinDir: dir, MaxIPCache: 1 << 18, MaxServiceSlots: 1 << 14, MaxBackends: 1 << 12}
}

// openTestMaps opens maps in cfg.PinDir (a fresh one if empty) and closes and
// unpins them at the end of the test.
func openTestMaps(t testing.TB, cfg Config) *Maps {
	t.Helper()
	testenv.RequireRoot(t)
	if cfg.PinDir == "" {
		cfg.PinDir = testPinDir(t)
	}
	m, err := OpenMaps(cfg)
	if err != nil {
		t.Fatalf("OpenMaps: %v", err)
	}
	t.Cleanup(func() {
		m.Close()
		if err := m.Unpin(); err != nil {
			t.Errorf("Unpin: %v", err)
		}
	})
	return m
}

// impls is the table of implementations the behavioural suite runs against.
var impls = []struct {
	name string
	open func(t *testing.T) Datapath
}{
	{"ebpf", func(t *testing.T) Datapath { return openTestMaps(t, smallConfig("")) }},
	{"memory", func(t *testing.T) Datapath { return NewMemory() }},
}

// forEach runs fn as a subtest against every implementation.
func forEach(t *testing.T, fn func(t *testing.T, dp Datapath)) {
	for _, impl := range impls {
		t.Run(impl.name, func(t *testing.T) { fn(t, impl.open(t)) })
	}
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func fe(s string, proto Protocol) Frontend {
	ap := netip.MustParseAddrPort(s)
	return Frontend{Addr: ap.Addr(), Port: ap.Port(), Protocol: proto}
}

func be(s string, cluster uint16) Backend {
	ap := netip.MustParseAddrPort(s)
	return Backend{Addr: ap.Addr(), Port: ap.Port(), Protocol: TCP, ClusterID: cluster}
}

func mustNoErr(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantErrIs(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want one wrapping %v", err, target)
	}
}

func wantIPCache(t testing.TB, dp Datapath, want map[netip.Prefix]IPCacheEntry) {
	t.Helper()
	got, err := dp.IPCache()
	mustNoErr(t, err)
	if want == nil {
		want = map[netip.Prefix]IPCacheEntry{}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ipcache dump:\n got  %v\n want %v", got, want)
	}
}

func wantServices(t testing.TB, dp Datapath, want map[Frontend][]Backend) {
	t.Helper()
	got, err := dp.Services()
	mustNoErr(t, err)
	if want == nil {
		want = map[Frontend][]Backend{}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("services dump:\n got  %v\n want %v", got, want)
	}
}

// rawState is the kernel content of the service and backend maps.
type rawState struct {
	services map[serviceKey]serviceValue
	backends map[uint32]backendValue
}

func readRaw(t testing.TB, m *Maps) rawState {
	t.Helper()
	r := rawState{services: map[serviceKey]serviceValue{}, backends: map[uint32]backendValue{}}
	var k serviceKey
	var v serviceValue
	it := m.services.Iterate()
	for it.Next(&k, &v) {
		r.services[k] = v
	}
	mustNoErr(t, it.Err())
	var id uint32
	var bv backendValue
	it = m.backends.Iterate()
	for it.Next(&id, &bv) {
		r.backends[id] = bv
	}
	mustNoErr(t, it.Err())
	return r
}

// wantRawService checks that f has exactly a master with count len(want) and
// slots 1..len(want) pointing at backend entries equal to want.
func (r rawState) wantService(t testing.TB, f Frontend, want []Backend) {
	t.Helper()
	master, ok := r.services[makeServiceKey(f, 0)]
	if !ok {
		t.Fatalf("%s: no master entry", f)
	}
	if int(master.Count) != len(want) || master.BackendID != 0 {
		t.Fatalf("%s: master %+v, want count %d", f, master, len(want))
	}
	for s := 1; s <= len(want)+2; s++ {
		v, ok := r.services[makeServiceKey(f, uint16(s))]
		if s > len(want) {
			if ok {
				t.Fatalf("%s: surplus slot %d still present: %+v", f, s, v)
			}
			continue
		}
		if !ok {
			t.Fatalf("%s: slot %d missing", f, s)
		}
		b, ok := r.backends[v.BackendID]
		if !ok {
			t.Fatalf("%s: slot %d points at missing backend %d", f, s, v.BackendID)
		}
		if b.backend() != want[s-1] {
			t.Fatalf("%s: slot %d is %v, want %v", f, s, b.backend(), want[s-1])
		}
	}
}
