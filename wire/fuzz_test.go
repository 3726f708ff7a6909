package wire

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// The fuzz targets assert that no input crashes a decoder and that whatever a
// decoder accepts re-encodes and decodes to an accepted value again. Their seed
// corpora run in every `go test`.

func FuzzParseKey(f *testing.F) {
	for _, seed := range []struct {
		kind Kind
		key  string
	}{
		{Nodes, "cilium/state/nodes/v1/east/n1"}, {Nodes, "cilium/state/nodes/v1/east/.."},
		{Services, "cilium/state/services/v1/east/a/b"},
		{Identities, "cilium/state/identities/v1/id/65536"}, {Identities, "cilium/state/identities/v1/id/065536"},
		{IPCache, "cilium/state/ip/v1/default/10.0.0.0/8"}, {IPCache, "cilium/state/ip/v1/default/10.2.1.7"},
		{IPCache, "cilium/state/ip/v1/default/10.2.1.7/32"}, {IPCache, "cilium/state/ip/v1/default/::ffff:10.2.1.8"},
		{IPCache, "cilium/state/ip/v1/default/fd00::5"}, {IPCache, "cilium/state/ip/v1/default/FD00:0::5/128"},
		{IPCache, "cilium/state/ip/v1/default/10.1.0.5/16"}, {IPCache, "cilium/state/ip/v1/default/fe80::1%eth0"},
	} {
		f.Add(uint8(seed.kind), seed.key)
	}
	f.Fuzz(func(t *testing.T, k uint8, key string) {
		kind := Kinds[int(k)%len(Kinds)]
		pk, err := ParseKey(kind, "east", key)
		if kind == IPCache {
			checkIPCacheKey(t, key, pk, err)
		}
		if err != nil {
			return
		}
		// An accepted key is exactly the key its parts build: one key per
		// entry, so a delete of any other key cannot remove it.
		if again := buildKey(pk); again != key {
			t.Fatalf("%v %q parsed as %+v, which builds %q", kind, key, pk, again)
		}
	})
}

// checkIPCacheKey: an accepted ipcache key is the canonical key of the
// prefix it names, and of every spelling a lenient reader would take for a
// prefix (mapped, zoned, host bits set, any case or compression), exactly
// the canonical one is accepted.
func checkIPCacheKey(t *testing.T, key string, pk ParsedKey, err error) {
	t.Helper()
	if err == nil && (!pk.Prefix.IsValid() || IPCachePrefixKey(pk.Prefix) != key || pk.Name != strings.TrimPrefix(key, IPCacheKey(""))) {
		t.Fatalf("accepted %q as %+v; its canonical key is %q", key, pk, IPCachePrefixKey(pk.Prefix))
	}
	suffix, ok := strings.CutPrefix(key, IPCacheKey(""))
	if !ok || len(key) > MaxKeyBytes {
		return
	}
	lenient, ok := lenientPrefix(suffix)
	if !ok {
		if err == nil {
			t.Fatalf("accepted %q, which names no prefix", key)
		}
		return
	}
	canon := IPCachePrefixKey(lenient)
	switch {
	case key == canon && err != nil:
		t.Fatalf("canonical key %q rejected: %v", key, err)
	case key != canon && err == nil:
		t.Fatalf("accepted %q, an alias of %q", key, canon)
	// An alias is rejected as one, unless it fails a check of every key
	// first (a zone may hold anything, "/" and ".." among them).
	case key != canon && !errors.Is(err, ErrNonCanonicalKey) && utf8.ValidString(key) && !strings.ContainsAny(suffix, "%\x00\n\r"):
		t.Fatalf("%q names %s (key %q): %v, want %v", key, lenient, canon, err, ErrNonCanonicalKey)
	}
}

// lenientPrefix reads s the way a lenient reader would: any address or CIDR
// netip parses, the zone dropped, host bits masked, IPv4-mapped unmapped.
func lenientPrefix(s string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, false
		}
		a = a.WithZone("")
		p = netip.PrefixFrom(a, a.BitLen())
	}
	p = p.Masked()
	if a := p.Addr(); a.Is4In6() {
		if p.Bits() < 96 {
			return netip.Prefix{}, false
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p, true
}

func FuzzDecodeNode(f *testing.F) {
	f.Add([]byte(`{"Name":"n1","Cluster":"east","ClusterID":1,"IPv4AllocCIDR":{"IP":"10.1.0.0","Mask":"////AA=="}}`))
	f.Add([]byte(`{"Name":"n1","Cluster":"east","ClusterID":1,"IPAddresses":[{"Type":"InternalIP","IP":"::ffff:1.2.3.4"}]}`))
	f.Fuzz(func(t *testing.T, v []byte) {
		n, err := DecodeNode(east, NodeKey("east", "n1"), v)
		if err != nil {
			return
		}
		again, err := EncodeNode(n)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeNode(east, NodeKey("east", "n1"), again); err != nil {
			t.Fatalf("re-decode of accepted node: %v\n%s", err, again)
		}
	})
}

func FuzzDecodeIPIdentityPair(f *testing.F) {
	f.Add("10.1.0.5", []byte(`{"IP":"10.1.0.5","ID":65600}`))
	f.Add("10.1.0.0/24", []byte(`{"IP":"10.1.0.0","Mask":"////AA==","ID":65600}`))
	f.Add("fd00::/64", []byte(`{"IP":"fd00::","Mask":"//////////8AAAAAAAAAAA==","ID":2}`))
	f.Add("10.1.0.5/32", []byte(`{"IP":"10.1.0.5","Mask":"/////w==","ID":65600}`))
	f.Add("::ffff:10.1.0.5", []byte(`{"IP":"::ffff:10.1.0.5","ID":65600}`))
	f.Fuzz(func(t *testing.T, suffix string, v []byte) {
		p, err := DecodeIPIdentityPair(east, IPCacheKey(suffix), v)
		if err != nil {
			return
		}
		if !p.Prefix().IsValid() || !east.OwnsIdentity(p.ID) {
			t.Fatalf("accepted invalid pair %+v", p)
		}
		// The key is the canonical key of the value's prefix.
		if IPCachePrefixKey(p.Prefix()) != IPCacheKey(suffix) {
			t.Fatalf("accepted key %q for %s, whose key is %q", IPCacheKey(suffix), p.Prefix(), IPCachePrefixKey(p.Prefix()))
		}
		again, _ := EncodeIPIdentityPair(p)
		if _, err := DecodeIPIdentityPair(east, IPCacheKey(p.KeySuffix()), again); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

func FuzzDecodeService(f *testing.F) {
	f.Add([]byte(`{"cluster":"east","namespace":"shop","name":"checkout","clusterID":1,` +
		`"frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":80}}},"backends":{"10.1.0.5":{"http":{"Protocol":"TCP","Port":8080}}}}`))
	f.Add([]byte(`{"cluster":"east","namespace":"shop","name":"checkout","clusterID":1,` +
		`"backends":{"10.1.0.5":{"http":{"Protocol":"TCP","Port":8080}},"10.1.0.6":{"http":{"Protocol":"TCP","Port":8080}}},` +
		`"clustermesh.io/terminating":["10.1.0.6"]}`))
	f.Add([]byte(`{"cluster":"east","namespace":"shop","name":"checkout","clusterID":1,` +
		`"backends":{"10.1.0.5":{"http":{"Protocol":"TCP","Port":8080}}},"clustermesh.io/terminating":["10.1.0.5","10.1.0.7"]}`))
	f.Fuzz(func(t *testing.T, v []byte) {
		s, err := DecodeService(east, ServiceKey("east", "shop", "checkout"), v)
		if err != nil {
			return
		}
		again, _ := EncodeService(s)
		if _, err := DecodeService(east, ServiceKey("east", "shop", "checkout"), again); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

func FuzzDecodeIdentity(f *testing.F) {
	f.Add(uint32(65600), "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=east;")
	f.Add(uint32(65600), "k8s:a=;k8s:io.cilium.k8s.policy.cluster=east;")
	f.Fuzz(func(t *testing.T, id uint32, v string) {
		got, err := DecodeIdentity(east, IdentityKey(id), []byte(v))
		if err != nil {
			return
		}
		if _, err := DecodeIdentity(east, IdentityKey(got.ID), EncodeIdentity(got)); err != nil {
			t.Fatalf("re-decode of %q: %v", EncodeIdentity(got), err)
		}
	})
}

func FuzzDecodeClusterConfig(f *testing.F) {
	f.Add([]byte(`{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}`))
	f.Add([]byte(`{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255,"endpointSlicesExportMode":"endpointslices-only"}}`))
	f.Add([]byte(`{"id":3,"capabilities":{"maxConnectedClusters":511}}`))
	f.Fuzz(func(t *testing.T, v []byte) {
		c, cfg, err := DecodeClusterConfig("north", 255, v)
		if err == nil && (c.Name != "north" || c.MaxConnectedClusters != 255 || c.ID != cfg.ID) {
			t.Fatalf("accepted %s as cluster %+v", v, c)
		}
	})
}

// FuzzIPIdentityPairFast: whatever the fast decoder accepts, encoding/json
// decodes to the very same value (differential fuzzing).
func FuzzIPIdentityPairFast(f *testing.F) {
	for _, s := range []string{
		`{"IP":"10.1.0.5","Mask":null,"HostIP":"192.168.1.1","ID":65600,"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"a"}`,
		`{"IP":"10.1.0.0","Mask":"////AA==","ID":65600}`, `{ "IP" : "fd00::1" , "ID" : 7 }`, `{}`, `{"IP":"x"}`,
		`{"ID":01}`, `{"ID":1e3}`, `{"Key":256}`, `{"IP":"a","IP":"b"}`, `{"ip":"10.0.0.1"}`, `{"Mask":""}`,
		`{"Metadata":"\u00e9"}`, `{"K8sPodName":"é"}`, `{"IP":"10.0.0.1"} x`, `{"IP":null}`, `{"HostIP":""}`,
		`{"IP":"10.1.0.5","ID":65600,"K8sPodName":"frontend-7d9f8-x2k4p","clustermesh.io/workload":"Deployment/frontend"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if checkSize(b) != nil {
			return
		}
		var fast IPIdentityPair
		if !decodeIPIdentityPairFast(b, &fast) {
			return
		}
		var slow IPIdentityPair
		if err := json.Unmarshal(b, &slow); err != nil {
			t.Fatalf("fast accepted %q, encoding/json refuses: %v", b, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: fast %+v, encoding/json %+v", b, fast, slow)
		}
	})
}
