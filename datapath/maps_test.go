package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// Tests of the eBPF implementation only: the raw kernel maps, restart,
// pins, limits.

func TestLayoutSizes(t *testing.T) {
	for _, c := range []struct {
		v    any
		want int
	}{
		{ipcacheKey{}, ipcacheKeySize}, {ipcacheValue{}, ipcacheValueSize},
		{serviceKey{}, serviceKeySize}, {serviceValue{}, serviceValueSize},
		{uint32(0), backendIDSize}, {backendValue{}, backendValueSize},
	} {
		if got := binary.Size(c.v); got != c.want {
			t.Errorf("%T: %d bytes, want %d", c.v, got, c.want)
		}
	}
	k := makeServiceKey(fe("10.0.0.1:443", TCP), 3)
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], k.Port)
	if b != [2]byte{0x01, 0xbb} {
		t.Errorf("port 443 stored as bytes %x, want network order 01bb", b)
	}
	ik := makeIPCacheKey(pfx("10.1.2.0/24"))
	if ik.PrefixLen != 56 || ik.Family != 4 || ik.Addr != [16]byte{10, 1, 2} {
		t.Errorf("ipcache key %+v", ik)
	}
}

func TestMapsLPMKernelLookup(t *testing.T) {
	m := openTestMaps(t, smallConfig(""))
	e24 := IPCacheEntry{Identity: 24, TunnelEndpoint: addr("192.168.0.24"), ClusterID: 1}
	e32 := IPCacheEntry{Identity: 32, ClusterID: 1}
	e64 := IPCacheEntry{Identity: 64, TunnelEndpoint: addr("fd00::64"), ClusterID: 2}
	mustNoErr(t, m.UpsertIPCache(pfx("10.1.2.0/24"), e24))
	mustNoErr(t, m.UpsertIPCache(pfx("10.1.2.99/32"), e32))
	mustNoErr(t, m.UpsertIPCache(pfx("fd00:1:2:3::/64"), e64))
	mustNoErr(t, m.UpsertIPCache(pfx("0.0.0.0/0"), IPCacheEntry{Identity: 2}))

	lookup := func(a string) (IPCacheEntry, error) {
		k := makeIPCacheKey(netip.PrefixFrom(addr(a), addr(a).BitLen()))
		var v ipcacheValue
		err := m.ipcache.Lookup(&k, &v)
		return v.entry(), err
	}
	for a, want := range map[string]IPCacheEntry{
		"10.1.2.3":            e24,
		"10.1.2.255":          e24,
		"10.1.2.99":           e32,
		"10.1.3.1":            {Identity: 2},
		"fd00:1:2:3:aaaa::1":  e64,
		"fd00:1:2:3:ffff::ff": e64,
	} {
		got, err := lookup(a)
		if err != nil || got != want {
			t.Errorf("kernel lookup %s = %+v, %v; want %+v", a, got, err, want)
		}
	}
	// The IPv4 /0 must not match IPv6 addresses: the family byte is covered.
	if got, err := lookup("fd00:9::1"); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("kernel lookup fd00:9::1 = %+v, %v; want ErrKeyNotExist", got, err)
	}
}

func TestMapsRawServiceMaps(t *testing.T) {
	m := openTestMaps(t, smallConfig(""))
	fa, fb := fe("10.96.0.1:80", TCP), fe("[fd00:96::1]:80", TCP)
	b1, b2, b3 := be("10.1.0.1:8080", 1), be("10.1.0.2:8080", 1), be("[fd00::3]:8080", 2)

	mustNoErr(t, m.UpsertService(fa, []Backend{b1, b2, b3}))
	r := readRaw(t, m)
	r.wantService(t, fa, []Backend{b1, b2, b3})
	if len(r.services) != 4 || len(r.backends) != 3 {
		t.Fatalf("raw: %d service entries, %d backends; want 4, 3", len(r.services), len(r.backends))
	}

	// Shrink: surplus slots and unreferenced backends are gone.
	mustNoErr(t, m.UpsertService(fa, []Backend{b2}))
	r = readRaw(t, m)
	r.wantService(t, fa, []Backend{b2})
	if len(r.services) != 2 || len(r.backends) != 1 {
		t.Fatalf("after shrink: %d service entries, %d backends; want 2, 1", len(r.services), len(r.backends))
	}

	// Sharing: deleting one service keeps the shared backend.
	mustNoErr(t, m.UpsertService(fa, []Backend{b1, b2}))
	mustNoErr(t, m.UpsertService(fb, []Backend{b2, b3}))
	if r = readRaw(t, m); len(r.backends) != 3 {
		t.Fatalf("%d backends, want 3 (b2 shared)", len(r.backends))
	}
	mustNoErr(t, m.DeleteService(fa))
	r = readRaw(t, m)
	r.wantService(t, fb, []Backend{b2, b3})
	if len(r.services) != 3 || len(r.backends) != 2 {
		t.Fatalf("after delete: %d service entries, %d backends; want 3, 2", len(r.services), len(r.backends))
	}

	// Weights: the same backend twice is two slots, one backend entry.
	mustNoErr(t, m.UpsertService(fa, []Backend{b1, b1}))
	r = readRaw(t, m)
	r.wantService(t, fa, []Backend{b1, b1})
	if v1, v2 := r.services[makeServiceKey(fa, 1)], r.services[makeServiceKey(fa, 2)]; v1 != v2 {
		t.Fatalf("weighted slots point at different ids: %+v %+v", v1, v2)
	}
	if len(r.backends) != 3 || m.refs[m.backendIDs[b1]] != 2 {
		t.Fatalf("%d backends (want 3), refs of b1 %d (want 2)", len(r.backends), m.refs[m.backendIDs[b1]])
	}
	mustNoErr(t, m.UpsertService(fa, []Backend{b1}))
	if r = readRaw(t, m); len(r.backends) != 3 || m.refs[m.backendIDs[b1]] != 1 {
		t.Fatalf("after unweighting: %d backends, refs of b1 %d", len(r.backends), m.refs[m.backendIDs[b1]])
	}

	// Empty: the master stays with count 0.
	mustNoErr(t, m.UpsertService(fa, nil))
	r = readRaw(t, m)
	r.wantService(t, fa, nil)
	if len(r.backends) != 2 {
		t.Fatalf("%d backends, want 2", len(r.backends))
	}

	// Delete releases everything.
	mustNoErr(t, m.DeleteService(fa))
	mustNoErr(t, m.DeleteService(fb))
	if r = readRaw(t, m); len(r.services)+len(r.backends) != 0 {
		t.Fatalf("maps not empty after deleting all services: %+v", r)
	}
	if len(m.svcs)+len(m.backendIDs)+len(m.backendsByID)+len(m.refs) != 0 {
		t.Fatalf("mirror not empty: %d %d %d %d", len(m.svcs), len(m.backendIDs), len(m.backendsByID), len(m.refs))
	}
}

func TestMapsIdempotentSkipsWrite(t *testing.T) {
	m := openTestMaps(t, smallConfig(""))
	p := pfx("10.5.0.0/16")
	mustNoErr(t, m.UpsertIPCache(p, IPCacheEntry{Identity: 5}))
	// Change the kernel behind the mirror's back: an identical upsert must
	// not issue a write (so the foreign value survives).
	k, v := makeIPCacheKey(p), makeIPCacheValue(IPCacheEntry{Identity: 6})
	mustNoErr(t, m.ipcache.Update(&k, &v, ebpf.UpdateAny))
	mustNoErr(t, m.UpsertIPCache(p, IPCacheEntry{Identity: 5}))
	wantIPCache(t, m, map[netip.Prefix]IPCacheEntry{p: {Identity: 6}})
}

func TestMapsRestart(t *testing.T) {
	testenv.RequireRoot(t)
	cfg := smallConfig(testPinDir(t))
	m := openTestMaps(t, cfg)
	b := func(i int) Backend { return be(fmt.Sprintf("10.1.0.%d:80", i), 1) }
	fa, fb, fc := fe("10.96.0.1:80", TCP), fe("10.96.0.2:80", TCP), fe("10.96.0.3:80", UDP)
	mustNoErr(t, m.UpsertService(fa, []Backend{b(1), b(2), b(3)}))
	mustNoErr(t, m.UpsertService(fb, []Backend{b(3), b(4), b(4)}))
	mustNoErr(t, m.UpsertService(fc, nil))
	mustNoErr(t, m.UpsertService(fa, []Backend{b(1)})) // frees ids of b(2)
	mustNoErr(t, m.UpsertIPCache(pfx("10.1.0.0/24"), IPCacheEntry{Identity: 1, TunnelEndpoint: addr("192.168.0.1"), ClusterID: 1}))
	mustNoErr(t, m.UpsertIPCache(pfx("fd00::/64"), IPCacheEntry{Identity: 2, TunnelEndpoint: addr("fd01::1"), ClusterID: 2}))
	ipc1, err := m.IPCache()
	mustNoErr(t, err)
	svc1, err := m.Services()
	mustNoErr(t, err)
	ids1 := map[Backend]uint32{}
	for k, v := range m.backendIDs {
		ids1[k] = v
	}
	next1 := m.nextID
	mustNoErr(t, m.Close())

	m2, err := OpenMaps(cfg)
	mustNoErr(t, err)
	defer m2.Close()
	wantIPCache(t, m2, ipc1)
	wantServices(t, m2, svc1)
	if !reflect.DeepEqual(m2.backendIDs, ids1) {
		t.Fatalf("backend ids after restart %v, want %v", m2.backendIDs, ids1)
	}
	if m2.nextID != next1 {
		t.Fatalf("next id after restart %d, want %d", m2.nextID, next1)
	}
	if m2.refs[ids1[b(4)]] != 2 || m2.refs[ids1[b(3)]] != 1 {
		t.Fatalf("refs after restart: %v", m2.refs)
	}

	// Unchanged upserts after restart are no-ops; new backends get new ids.
	mustNoErr(t, m2.UpsertService(fb, []Backend{b(3), b(4), b(4)}))
	mustNoErr(t, m2.UpsertService(fc, []Backend{b(5), b(1)}))
	id5 := m2.backendIDs[b(5)]
	for bk, id := range ids1 {
		if id == id5 {
			t.Fatalf("new backend got id %d, still used by %s", id, bk)
		}
	}
	if m2.backendIDs[b(1)] != ids1[b(1)] {
		t.Fatalf("existing backend b1 got a new id")
	}
	r := readRaw(t, m2)
	r.wantService(t, fa, []Backend{b(1)})
	r.wantService(t, fb, []Backend{b(3), b(4), b(4)})
	r.wantService(t, fc, []Backend{b(5), b(1)})
	if len(r.backends) != 4 {
		t.Fatalf("%d backends, want 4", len(r.backends))
	}
}

func TestMapsRestartRepairs(t *testing.T) {
	testenv.RequireRoot(t)
	cfg := smallConfig(testPinDir(t))
	m := openTestMaps(t, cfg)
	f := fe("10.96.0.1:80", TCP)
	mustNoErr(t, m.UpsertService(f, []Backend{be("10.1.0.1:80", 1)}))
	// What an interrupted writer could leave: a slot beyond the count, a slot
	// without a master, a backend nobody refers to.
	put := func(em *ebpf.Map, k, v any) { mustNoErr(t, em.Update(k, v, ebpf.UpdateAny)) }
	put(m.services, makeServiceKey(f, 2), serviceValue{BackendID: 1})
	put(m.services, makeServiceKey(fe("10.96.0.9:80", TCP), 1), serviceValue{BackendID: 1})
	put(m.backends, uint32(77), makeBackendValue(be("10.1.0.77:80", 1)))
	mustNoErr(t, m.Close())

	m2, err := OpenMaps(cfg)
	mustNoErr(t, err)
	defer m2.Close()
	r := readRaw(t, m2)
	r.wantService(t, f, []Backend{be("10.1.0.1:80", 1)})
	if len(r.services) != 2 || len(r.backends) != 1 {
		t.Fatalf("after repair: %d service entries, %d backends; want 2, 1", len(r.services), len(r.backends))
	}
	if m2.nextID <= 77 {
		t.Fatalf("next id %d may collide with ids seen in the maps", m2.nextID)
	}
}

func TestMapsIncompatiblePin(t *testing.T) {
	testenv.RequireRoot(t)
	dir := testPinDir(t)
	mustNoErr(t, os.MkdirAll(dir, 0o700))
	t.Cleanup(func() { RemovePins(dir) })
	other, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 8})
	mustNoErr(t, err)
	mustNoErr(t, other.Pin(filepath.Join(dir, IPCacheMapName)))
	other.Close()

	_, err = OpenMaps(smallConfig(dir))
	wantErrIs(t, err, ebpf.ErrMapIncompatible)
	wantErrIs(t, err, ErrIncompatiblePin)
	t.Logf("error: %v", err)

	// The same map opened with other limits is incompatible too; RemovePins
	// clears the way without opening anything.
	mustNoErr(t, RemovePins(dir))
	m, err := OpenMaps(smallConfig(dir))
	mustNoErr(t, err)
	m.Close()
	cfg := smallConfig(dir)
	cfg.MaxBackends *= 2
	_, err = OpenMaps(cfg)
	wantErrIs(t, err, ErrIncompatiblePin)
	// The error says which option changed the size, and from what to what.
	if want := fmt.Sprintf("has %d entries, --max-backend-entries (Config.MaxBackends) asks for %d", cfg.MaxBackends/2, cfg.MaxBackends); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	t.Logf("error: %v", err)
	mustNoErr(t, RemovePins(dir))
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pin dir still there after RemovePins: %v", err)
	}
}

func TestMapsPinDirNotBPFFS(t *testing.T) {
	testenv.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "not", "bpffs")
	_, err := OpenMaps(Config{PinDir: dir})
	wantErrIs(t, err, ErrNotBPFFS)
	if _, statErr := os.Stat(dir); !errors.Is(statErr, os.ErrNotExist) {
		t.Fatalf("OpenMaps created %s: %v", dir, statErr)
	}
	if err := (Config{PinDir: "relative"}).Validate(); err == nil {
		t.Fatal("a relative PinDir validated")
	}
}

// wantFull checks that err is ErrFull naming the option an operator raises.
func wantFull(t testing.TB, err error, flag string) {
	t.Helper()
	wantErrIs(t, err, ErrFull)
	if !strings.Contains(err.Error(), "raise --"+flag+" ") {
		t.Fatalf("error %q does not name --%s", err, flag)
	}
}

func TestMapsFull(t *testing.T) {
	m := openTestMaps(t, Config{PinDir: testPinDir(t), MaxIPCache: 2, MaxServiceSlots: 3, MaxBackends: 2})
	mustNoErr(t, m.UpsertIPCache(pfx("10.0.0.0/8"), IPCacheEntry{}))
	mustNoErr(t, m.UpsertIPCache(pfx("10.0.0.0/16"), IPCacheEntry{}))
	err := m.UpsertIPCache(pfx("10.0.0.0/24"), IPCacheEntry{})
	wantFull(t, err, "max-ipcache-entries")
	t.Logf("error: %v", err)
	// A batch that does not fit is one error, however many entries it has.
	err = m.UpsertIPCacheBatch([]netip.Prefix{pfx("10.1.0.0/16"), pfx("10.2.0.0/16")}, make([]IPCacheEntry, 2))
	wantFull(t, err, "max-ipcache-entries")

	f := fe("10.96.0.1:80", TCP)
	err = m.UpsertService(f, []Backend{be("10.1.0.1:80", 1), be("10.1.0.2:80", 1), be("10.1.0.3:80", 1)})
	wantFull(t, err, "max-backend-entries")
	t.Logf("error: %v", err)
	if r := readRaw(t, m); len(r.services)+len(r.backends) != 0 {
		t.Fatalf("failed upsert left entries behind: %+v", r)
	}
	// Two backends fit, but three slots and a master do not.
	err = m.UpsertService(f, []Backend{be("10.1.0.1:80", 1), be("10.1.0.2:80", 1), be("10.1.0.1:80", 1)})
	wantFull(t, err, "max-service-entries")
	t.Logf("error: %v", err)
	// The mirror followed the kernel: a smaller upsert and a delete clean up.
	mustNoErr(t, m.UpsertService(f, []Backend{be("10.1.0.2:80", 1)}))
	readRaw(t, m).wantService(t, f, []Backend{be("10.1.0.2:80", 1)})
	mustNoErr(t, m.DeleteService(f))
	if r := readRaw(t, m); len(r.services)+len(r.backends) != 0 {
		t.Fatalf("entries left after delete: %+v", r)
	}
}

// TestMapsLargeDump: dumps of large maps are complete (batch lookups in
// chunks, the cursor carried across them). Their speed is a figure of
// `make bench` (TestFiguresMapsDump), not asserted here.
func TestMapsLargeDump(t *testing.T) {
	m := openTestMaps(t, smallConfig(""))
	const n = 100_000
	ps, es := dumpTestIPCache(n)
	mustNoErr(t, m.UpsertIPCacheBatch(ps, es))
	got, err := m.IPCache()
	mustNoErr(t, err)
	if len(got) != n {
		t.Fatalf("dumped %d entries, want %d", len(got), n)
	}
	for i, p := range ps {
		if got[p] != es[i] {
			t.Fatalf("dumped %s → %+v, want %+v", p, got[p], es[i])
		}
	}

	// Services with 10,000 slots dump whole too.
	first := fe("10.96.0.0:80", TCP)
	dumpTestServices(t, m)
	svcs, err := m.Services()
	mustNoErr(t, err)
	if len(svcs) != 1000 || len(svcs[first]) != 10 || svcs[first][0] != be("10.100.0.0:80", 1) {
		t.Fatalf("dumped %d services, %s → %v; want 1000, the first with 10 backends from 10.100.0.0:80", len(svcs), first, svcs[first])
	}
}

// dumpTestIPCache returns n distinct host prefixes, half IPv4, half IPv6,
// and an entry for each.
func dumpTestIPCache(n int) ([]netip.Prefix, []IPCacheEntry) {
	ps := make([]netip.Prefix, n)
	es := make([]IPCacheEntry, n)
	for i := range n {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if i%2 == 1 {
			a = netip.AddrFrom16([16]byte{0xfd, 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
		}
		ps[i] = netip.PrefixFrom(a, a.BitLen())
		es[i] = IPCacheEntry{Identity: uint32(i), TunnelEndpoint: addr("192.168.0.1"), ClusterID: 1}
	}
	return ps, es
}

// dumpTestServices writes 1000 services of 10 backends each (out of 2000).
func dumpTestServices(t testing.TB, m *Maps) {
	t.Helper()
	for i := range 1000 {
		bs := make([]Backend, 10)
		for j := range bs {
			k := (i*10 + j) % 2000
			bs[j] = be(fmt.Sprintf("10.100.%d.%d:80", k/250, k%250), 1)
		}
		mustNoErr(t, m.UpsertService(fe(fmt.Sprintf("10.96.%d.%d:80", i/250, i%250), TCP), bs))
	}
}

// Without the ipcache mirror, writes, overwrites, deletes and a restart
// behave the same (only identical writes are no longer skipped).
func TestMapsWithoutIPCacheMirror(t *testing.T) {
	testenv.RequireRoot(t)
	pin := testPinDir(t)
	m, err := OpenMaps(Config{PinDir: pin, NoIPCacheMirror: true})
	if err != nil {
		t.Fatal(err)
	}
	p := netip.MustParsePrefix("10.9.0.0/24")
	e := IPCacheEntry{Identity: 70000, ClusterID: 1}
	mustNoErr(t, m.UpsertIPCache(p, e))
	mustNoErr(t, m.UpsertIPCache(p, e))
	mustNoErr(t, m.UpsertIPCacheBatch([]netip.Prefix{netip.MustParsePrefix("10.9.1.1/32")}, []IPCacheEntry{e}))
	got, err := m.IPCache()
	if err != nil || len(got) != 2 || got[p] != e {
		t.Fatalf("dump: %v %v", got, err)
	}
	mustNoErr(t, m.DeleteIPCache(p))
	mustNoErr(t, m.DeleteIPCache(p)) // absent: fine
	m.Close()
	m, err = OpenMaps(Config{PinDir: pin, NoIPCacheMirror: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got, _ := m.IPCache(); len(got) != 1 {
		t.Errorf("after reopen: %v, want only 10.9.1.1/32", got)
	}
}
