package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
)

// The behavioural suite: every test here runs against both implementations.

func TestIPCacheUpsertOverwriteDelete(t *testing.T) {
	forEach(t, func(t *testing.T, dp Datapath) {
		want := map[netip.Prefix]IPCacheEntry{
			pfx("10.1.0.0/16"):        {Identity: 100, TunnelEndpoint: addr("192.168.1.1"), ClusterID: 2},
			pfx("10.1.2.3/32"):        {Identity: 101, TunnelEndpoint: addr("192.168.1.2"), ClusterID: 2},
			pfx("0.0.0.0/0"):          {Identity: 2},
			pfx("fd00:1::/64"):        {Identity: 200, TunnelEndpoint: addr("fd00::1"), ClusterID: 3},
			pfx("fd00:1::42/128"):     {Identity: 201, TunnelEndpoint: addr("192.168.1.3"), ClusterID: 3},
			pfx("::/0"):               {Identity: 2},
			pfx("2001:db8:ff::/48"):   {Identity: 202, ClusterID: 255},
			pfx("172.16.255.255/32"):  {Identity: 4294967295, ClusterID: 65535},
			pfx("fd00:2::/127"):       {Identity: 7, TunnelEndpoint: addr("fd00::ffff")},
			pfx("10.255.255.128/25"):  {Identity: 8, TunnelEndpoint: addr("10.0.0.1")},
			pfx("2001:db8::1:0/112"):  {Identity: 9},
			pfx("192.0.2.0/24"):       {Identity: 10},
			pfx("192.0.2.0/25"):       {Identity: 11},
			pfx("2001:db8:0:1::/100"): {Identity: 12},
		}
		for p, e := range want {
			mustNoErr(t, dp.UpsertIPCache(p, e))
		}
		wantIPCache(t, dp, want)

		// Overwrite, idempotent rewrite.
		want[pfx("10.1.0.0/16")] = IPCacheEntry{Identity: 150, ClusterID: 4}
		for range 2 {
			mustNoErr(t, dp.UpsertIPCache(pfx("10.1.0.0/16"), want[pfx("10.1.0.0/16")]))
			mustNoErr(t, dp.UpsertIPCache(pfx("fd00:1::/64"), want[pfx("fd00:1::/64")]))
		}
		wantIPCache(t, dp, want)

		// Delete, twice, and delete of what never existed.
		for range 2 {
			mustNoErr(t, dp.DeleteIPCache(pfx("10.1.2.3/32")))
			mustNoErr(t, dp.DeleteIPCache(pfx("fd00:1::/64")))
			mustNoErr(t, dp.DeleteIPCache(pfx("203.0.113.0/24")))
		}
		delete(want, pfx("10.1.2.3/32"))
		delete(want, pfx("fd00:1::/64"))
		wantIPCache(t, dp, want)

		for p := range want {
			mustNoErr(t, dp.DeleteIPCache(p))
		}
		wantIPCache(t, dp, nil)
	})
}

func TestIPCacheNormalisation(t *testing.T) {
	forEach(t, func(t *testing.T, dp Datapath) {
		// IPv4-mapped IPv6 becomes IPv4; host bits are masked off.
		mustNoErr(t, dp.UpsertIPCache(pfx("::ffff:10.2.0.0/112"), IPCacheEntry{Identity: 1, TunnelEndpoint: addr("::ffff:192.168.0.9")}))
		mustNoErr(t, dp.UpsertIPCache(pfx("10.3.0.77/24"), IPCacheEntry{Identity: 2}))
		mustNoErr(t, dp.UpsertIPCache(pfx("fd00::1234/64"), IPCacheEntry{Identity: 3}))
		wantIPCache(t, dp, map[netip.Prefix]IPCacheEntry{
			pfx("10.2.0.0/16"): {Identity: 1, TunnelEndpoint: addr("192.168.0.9")},
			pfx("10.3.0.0/24"): {Identity: 2},
			pfx("fd00::/64"):   {Identity: 3},
		})
		mustNoErr(t, dp.DeleteIPCache(pfx("::ffff:10.2.3.4/112")))
		mustNoErr(t, dp.DeleteIPCache(pfx("10.3.0.1/24")))
		mustNoErr(t, dp.DeleteIPCache(pfx("fd00::/64")))
		wantIPCache(t, dp, nil)
	})
}

func TestIPCacheBatch(t *testing.T) {
	forEach(t, func(t *testing.T, dp Datapath) {
		bw := dp.(BatchWriter)
		var ps []netip.Prefix
		var es []IPCacheEntry
		want := map[netip.Prefix]IPCacheEntry{}
		for i := range 3000 {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), 32)
			if i%3 == 0 {
				p = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 9, 0, 14: byte(i >> 8), 15: byte(i)}), 128)
			}
			e := IPCacheEntry{Identity: uint32(i), TunnelEndpoint: addr("192.168.0.1"), ClusterID: 1}
			ps, es = append(ps, p), append(es, e)
			want[p] = e
		}
		// A duplicate later in the batch wins.
		ps, es = append(ps, ps[5]), append(es, IPCacheEntry{Identity: 99999})
		want[ps[5]] = IPCacheEntry{Identity: 99999}
		mustNoErr(t, bw.UpsertIPCacheBatch(ps, es))
		wantIPCache(t, dp, want)

		// Rewriting the same batch, and a batch with some changes.
		mustNoErr(t, bw.UpsertIPCacheBatch(ps, es))
		es[10] = IPCacheEntry{Identity: 424242}
		want[ps[10]] = es[10]
		mustNoErr(t, bw.UpsertIPCacheBatch(ps, es))
		wantIPCache(t, dp, want)

		// Invalid batches write nothing.
		wantErrIs(t, bw.UpsertIPCacheBatch(ps[:2], es[:1]), ErrInvalidBatch)
		bad := []netip.Prefix{pfx("10.99.0.0/16"), {}}
		wantErrIs(t, bw.UpsertIPCacheBatch(bad, make([]IPCacheEntry, 2)), ErrInvalidPrefix)
		wantErrIs(t, bw.UpsertIPCacheBatch(bad[:1], []IPCacheEntry{{TunnelEndpoint: addr("fe80::1%eth0")}}), ErrInvalidAddr)
		wantIPCache(t, dp, want)
		mustNoErr(t, bw.UpsertIPCacheBatch(nil, nil))
	})
}

func TestServiceUpsertShrinkGrow(t *testing.T) {
	forEach(t, func(t *testing.T, dp Datapath) {
		f := fe("10.96.0.10:53", UDP)
		b1, b2, b3 := be("10.1.0.1:8053", 1), be("10.1.0.2:8053", 1), be("[fd00::3]:8053", 2)
		b1.Protocol, b2.Protocol, b3.Protocol = UDP, UDP, UDP
		mustNoErr(t, dp.UpsertService(f, []Backend{b1, b2, b3}))
		wantServices(t, dp, map[Frontend][]Backend{f: {b1, b2, b3}})
		mustNoErr(t, dp.UpsertService(f, []Backend{b1, b2, b3})) // idempotent
		wantServices(t, dp, map[Frontend][]Backend{f: {b1, b2, b3}})

		mustNoErr(t, dp.UpsertService(f, []Backend{b2}))
		wantServices(t, dp, map[Frontend][]Backend{f: {b2}})
		mustNoErr(t, dp.UpsertService(f, []Backend{b3, b1, b2}))
		wantServices(t, dp, map[Frontend][]Backend{f: {b3, b1, b2}})
		mustNoErr(t, dp.UpsertService(f, []Backend{b1, b3}))
		wantServices(t, dp, map[Frontend][]Backend{f: {b1, b3}})

		f6 := fe("[fd00:96::10]:443", TCP)
		mustNoErr(t, dp.UpsertService(f6, []Backend{be("[fd00::7]:8443", 0)}))
		wantServices(t, dp, map[Frontend][]Backend{f: {b1, b3}, f6: {be("[fd00::7]:8443", 0)}})
	})
}

func TestServiceSharedBackend(t *testing.T) {
	forEach(t, func(t *testing.T, dp Datapath) {
		fa, fb := fe("10.96.0.1:80", TCP), fe("10.96.0.2:80", TCP)
		shared, onlyA := be("10.1.0.1:8080", 1), be("10.1.0.2:8080", 1)
		mustNoErr(t, dp.UpsertService(fa, []Backend{shared, onlyA}))
		mustNoErr(t, dp.UpsertService(fb, []Backend{shared}))
		mustNoErr(t, dp.DeleteService(fa))
		wantServices(t, dp, map[Frontend][]Backend{fb: {shared}})
		mustNoErr(t, dp.UpsertService(fa, []Backend{onlyA, shared}))
		mustNoErr(t, dp.UpsertService(fb, nil))
		wantServices(t, dp, map[Frontend][]Backend{fa: {onlyA, shared}, fb: {}})
	})
}

func TestServiceWeights(t *testing.T) {
	forEach(t, func(t *testing.T, dp Datapath) {
		f := fe("10.96.0.3:80", TCP)
		heavy, light := be("10.1.0.1:80", 1), be("10.1.0.2:80", 1)
		mustNoErr(t, dp.UpsertService(f, []Backend{heavy, heavy, light}))
		wantServices(t, dp, map[Frontend][]Backend{f: {heavy, heavy, light}})
		mustNoErr(t, dp.UpsertService(f, []Backend{heavy, light}))
		wantServices(t, dp, map[Frontend][]Backend{f: {heavy, light}})
		mustNoErr(t, dp.UpsertService(f, []Backend{light, light}))
		wantServices(t, dp, map[Frontend][]Backend{f: {light, light}})
	})
}

func TestServiceEmptyAndDelete(t *testing.T) {
	forEach(t, func(t *testing.T, dp Datapath) {
		f := fe("10.96.0.4:80", SCTP)
		mustNoErr(t, dp.UpsertService(f, nil))
		wantServices(t, dp, map[Frontend][]Backend{f: {}})
		mustNoErr(t, dp.UpsertService(f, []Backend{be("10.1.0.1:80", 1)}))
		mustNoErr(t, dp.UpsertService(f, []Backend{}))
		wantServices(t, dp, map[Frontend][]Backend{f: {}})
		mustNoErr(t, dp.UpsertService(f, []Backend{be("10.1.0.1:80", 1), be("10.1.0.1:80", 2)}))
		for range 2 {
			mustNoErr(t, dp.DeleteService(f))
		}
		mustNoErr(t, dp.DeleteService(fe("10.96.9.9:9", TCP)))
		wantServices(t, dp, nil)
	})
}

func TestServiceNormalisation(t *testing.T) {
	forEach(t, func(t *testing.T, dp Datapath) {
		mapped := Frontend{Addr: addr("::ffff:10.96.0.5"), Port: 80, Protocol: TCP}
		b := Backend{Addr: addr("::ffff:10.1.0.5"), Port: 80, Protocol: TCP, ClusterID: 1}
		mustNoErr(t, dp.UpsertService(mapped, []Backend{b}))
		wantServices(t, dp, map[Frontend][]Backend{fe("10.96.0.5:80", TCP): {be("10.1.0.5:80", 1)}})
		mustNoErr(t, dp.DeleteService(fe("10.96.0.5:80", TCP)))
		wantServices(t, dp, nil)
	})
}

func TestInvalidInputWritesNothing(t *testing.T) {
	good := be("10.1.0.1:80", 1)
	cases := []struct {
		name string
		do   func(Datapath) error
		want error
	}{
		{"zero prefix", func(d Datapath) error { return d.UpsertIPCache(netip.Prefix{}, IPCacheEntry{Identity: 1}) }, ErrInvalidPrefix},
		{"prefix too long", func(d Datapath) error {
			return d.UpsertIPCache(netip.PrefixFrom(addr("10.0.0.1"), 33), IPCacheEntry{Identity: 1})
		}, ErrInvalidPrefix},
		{"zoned tunnel endpoint", func(d Datapath) error {
			return d.UpsertIPCache(pfx("10.0.0.0/8"), IPCacheEntry{TunnelEndpoint: addr("fe80::1%eth0")})
		}, ErrInvalidAddr},
		{"delete zero prefix", func(d Datapath) error { return d.DeleteIPCache(netip.Prefix{}) }, ErrInvalidPrefix},
		{"frontend without address", func(d Datapath) error {
			return d.UpsertService(Frontend{Port: 80, Protocol: TCP}, []Backend{good})
		}, ErrInvalidAddr},
		{"frontend port 0", func(d Datapath) error { return d.UpsertService(fe("10.96.0.1:0", TCP), []Backend{good}) }, ErrInvalidService},
		{"frontend protocol 0", func(d Datapath) error { return d.UpsertService(fe("10.96.0.1:80", 0), []Backend{good}) }, ErrInvalidService},
		{"zoned frontend", func(d Datapath) error { return d.UpsertService(fe("[fe80::1%eth0]:80", TCP), []Backend{good}) }, ErrInvalidAddr},
		{"backend without address", func(d Datapath) error {
			return d.UpsertService(fe("10.96.0.1:80", TCP), []Backend{good, {Port: 80, Protocol: TCP}})
		}, ErrInvalidAddr},
		{"backend port 0", func(d Datapath) error {
			return d.UpsertService(fe("10.96.0.1:80", TCP), []Backend{good, be("10.1.0.2:0", 1)})
		}, ErrInvalidService},
		{"backend protocol 99", func(d Datapath) error {
			return d.UpsertService(fe("10.96.0.1:80", TCP), []Backend{{Addr: addr("10.1.0.2"), Port: 80, Protocol: 99}})
		}, ErrInvalidService},
		{"too many slots", func(d Datapath) error {
			return d.UpsertService(fe("10.96.0.1:80", TCP), make([]Backend, maxSlots+1))
		}, ErrInvalidService},
		{"delete invalid frontend", func(d Datapath) error { return d.DeleteService(Frontend{}) }, ErrInvalidAddr},
	}
	forEach(t, func(t *testing.T, dp Datapath) {
		for _, c := range cases {
			err := c.do(dp)
			wantErrIs(t, err, c.want)
			if msg := err.Error(); len(msg) < 10 || msg[:10] != "datapath: " {
				t.Errorf("%s: error %q does not start with \"datapath: \"", c.name, msg)
			}
		}
		wantIPCache(t, dp, nil)
		wantServices(t, dp, nil)
		if m, ok := dp.(*Maps); ok {
			r := readRaw(t, m)
			if len(r.services)+len(r.backends) != 0 {
				t.Fatalf("raw maps not empty: %+v", r)
			}
		}
	})
}

func TestConcurrentUse(t *testing.T) {
	forEach(t, func(t *testing.T, dp Datapath) {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				shared := be("10.1.0.1:80", 1)
				for i := range 50 {
					f := fe(fmt.Sprintf("10.96.%d.%d:80", w, i%5), TCP)
					own := be(fmt.Sprintf("10.2.%d.%d:80", w, i), 1)
					p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 3, byte(w), byte(i)}), 32)
					_, dumpErr := dp.Services()
					if err := errors.Join(
						dp.UpsertService(f, []Backend{shared, own}),
						dp.UpsertIPCache(p, IPCacheEntry{Identity: uint32(i)}),
						dumpErr,
					); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			mustNoErr(t, err)
		}
		svcs, err := dp.Services()
		mustNoErr(t, err)
		if len(svcs) != 40 {
			t.Fatalf("%d services, want 40", len(svcs))
		}
		ipc, err := dp.IPCache()
		mustNoErr(t, err)
		if len(ipc) != 400 {
			t.Fatalf("%d ipcache entries, want 400", len(ipc))
		}
	})
}

func TestClosed(t *testing.T) {
	forEach(t, func(t *testing.T, dp Datapath) {
		mustNoErr(t, dp.Close())
		mustNoErr(t, dp.Close())
		wantErrIs(t, dp.UpsertIPCache(pfx("10.0.0.0/8"), IPCacheEntry{}), ErrClosed)
		wantErrIs(t, dp.UpsertService(fe("10.96.0.1:80", TCP), nil), ErrClosed)
		_, err := dp.Services()
		wantErrIs(t, err, ErrClosed)
	})
}

func TestKind(t *testing.T) {
	want := map[string]string{"ebpf": "ebpf", "memory": "memory"}
	for _, impl := range impls {
		t.Run(impl.name, func(t *testing.T) {
			if got := impl.open(t).Kind(); got != want[impl.name] {
				t.Fatalf("Kind() = %q", got)
			}
		})
	}
}

// TestLookupIPCacheLongestPrefix: a lookup finds the longest prefix holding
// the address, in both families, as the programs' trie lookups do.
func TestLookupIPCacheLongestPrefix(t *testing.T) {
	forEach(t, func(t *testing.T, dp Datapath) {
		for p, id := range map[string]uint32{"0.0.0.0/0": 2, "10.1.0.0/16": 100, "10.1.2.0/24": 101, "10.1.2.3/32": 102,
			"::/0": 2, "fd00:1::/64": 200, "fd00:1::42/128": 201} {
			mustNoErr(t, dp.UpsertIPCache(pfx(p), IPCacheEntry{Identity: id}))
		}
		for a, want := range map[string]uint32{"10.1.2.3": 102, "10.1.2.4": 101, "10.1.9.9": 100, "192.0.2.1": 2,
			"::ffff:10.1.2.3": 102, "fd00:1::42": 201, "fd00:1::43": 200, "2001:db8::1": 2} {
			e, ok := dp.LookupIPCache(addr(a))
			if !ok || e.Identity != want {
				t.Errorf("LookupIPCache(%s) = %d, %v; want %d", a, e.Identity, ok, want)
			}
		}
		mustNoErr(t, dp.DeleteIPCache(pfx("0.0.0.0/0")))
		if e, ok := dp.LookupIPCache(addr("192.0.2.1")); ok {
			t.Errorf("an address no prefix holds: %+v", e)
		}
	})
}
