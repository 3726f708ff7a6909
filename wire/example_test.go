package wire_test

import (
	"fmt"
	"net/netip"

	"github.com/clustermesh/clustermesh/wire"
)

// A reader decodes every ipcache entry against the remote it read it from:
// the key must name the value's address, and the identity must lie in that
// cluster's range. A refused entry is counted by its Reason, never applied.
func ExampleDecodeIPIdentityPair() {
	east := wire.Cluster{Name: "east", ID: 2, MaxConnectedClusters: 255}
	first, last := wire.IdentityRange(east.ID, east.MaxConnectedClusters)
	fmt.Printf("east's identities: %d..%d\n", first, last)

	// What east's apiserver publishes for one pod.
	pod := &wire.IPIdentityPair{
		IP:           netip.MustParseAddr("10.2.1.7"),
		HostIP:       netip.MustParseAddr("192.168.0.2"),
		ID:           first + 1,
		K8sNamespace: "shop",
		K8sPodName:   "cart-0",
	}
	key := wire.IPCachePrefixKey(netip.PrefixFrom(pod.IP, 32))
	value, err := wire.EncodeIPIdentityPair(pod)
	if err != nil {
		panic(err)
	}

	got, err := wire.DecodeIPIdentityPair(east, key, value)
	fmt.Println(got.Prefix(), got.ID, got.HostIP, got.K8sNamespace+"/"+got.K8sPodName, err)

	// The same value read from west: the identity is not west's to give.
	west := wire.Cluster{Name: "west", ID: 3, MaxConnectedClusters: 255}
	_, err = wire.DecodeIPIdentityPair(west, key, value)
	fmt.Println(wire.Reason(err))

	// Output:
	// east's identities: 131072..196607
	// 10.2.1.7/32 131073 192.168.0.2 shop/cart-0 <nil>
	// identity_out_of_range
}

// Keys are built, never spelled by hand: an ipcache key has one spelling per
// prefix (a bare address for a single one), which is the only one readers
// accept; a service key names its cluster, namespace and name.
func ExampleIPCachePrefixKey() {
	fmt.Println(wire.IPCachePrefixKey(netip.MustParsePrefix("10.2.1.7/32")))
	fmt.Println(wire.IPCachePrefixKey(netip.MustParsePrefix("10.2.0.0/16")))
	fmt.Println(wire.IPCachePrefixKey(netip.MustParsePrefix("fd00::1/128")))
	fmt.Println(wire.ServiceKey("east", "shop", "cart"))

	// Another spelling of the same address is refused.
	_, err := wire.ParseKey(wire.IPCache, "east", wire.IPCacheKey("10.2.1.7/32"))
	fmt.Println(wire.Reason(err))

	// Output:
	// cilium/state/ip/v1/default/10.2.1.7
	// cilium/state/ip/v1/default/10.2.0.0/16
	// cilium/state/ip/v1/default/fd00::1
	// cilium/state/services/v1/east/shop/cart
	// non_canonical_key
}
