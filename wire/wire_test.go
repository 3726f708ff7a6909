package wire

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

var east = Cluster{Name: "east", ID: 1, MaxConnectedClusters: 255}

func TestClusterNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"east", true}, {"a", true}, {"east-2", true}, {"0abc", true},
		{"", false}, {"-east", false}, {"east-", false}, {"East", false}, {"ea_st", false},
		{strings.Repeat("a", 32), true}, {strings.Repeat("a", 33), false},
	} {
		err := ValidateClusterName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateClusterName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidClusterName) {
			t.Errorf("error %v does not wrap ErrInvalidClusterName", err)
		}
	}
	if err := ValidateClusterID("default", 3, 255); !errors.Is(err, ErrInvalidClusterName) {
		t.Errorf("default with id 3: %v", err)
	}
	for _, id := range []uint32{0, 256} {
		if err := ValidateClusterID("x", id, 255); !errors.Is(err, ErrInvalidClusterID) {
			t.Errorf("id %d: %v", id, err)
		}
	}
	if err := ValidateClusterID("x", 511, 511); err != nil {
		t.Errorf("id 511 of 511: %v", err)
	}
}

func TestIdentityRange(t *testing.T) {
	for _, tc := range []struct{ id, max, first, last uint32 }{
		{1, 255, 1 << 16, 2<<16 - 1},
		{255, 255, 255 << 16, 256<<16 - 1},
		{1, 511, 1 << 15, 2<<15 - 1},
		{511, 511, 511 << 15, 512<<15 - 1},
	} {
		f, l := IdentityRange(tc.id, tc.max)
		if f != tc.first || l != tc.last {
			t.Errorf("IdentityRange(%d,%d) = %d..%d, want %d..%d", tc.id, tc.max, f, l, tc.first, tc.last)
		}
	}
	c := Cluster{Name: "x", ID: 2, MaxConnectedClusters: 255}
	for id, want := range map[uint32]bool{2: true, 255: true, 256: false, 0: false, 2 << 16: true, 3<<16 - 1: true, 3 << 16: false, 1<<16 + 5: false} {
		if got := c.OwnsIdentity(id); got != want {
			t.Errorf("OwnsIdentity(%d) = %v, want %v", id, got, want)
		}
	}
}

func TestClusterConfig(t *testing.T) {
	v, _ := EncodeClusterConfig(ClusterConfig{ID: 3, Capabilities: Capabilities{SyncedCanaries: true, MaxConnectedClusters: 255}})
	c, cfg, err := DecodeClusterConfig("north", 255, v)
	if err != nil || c.ID != 3 || !cfg.Capabilities.SyncedCanaries {
		t.Fatalf("decode: %+v %+v %v", c, cfg, err)
	}
	if _, _, err := DecodeClusterConfig("north", 511, v); !errors.Is(err, ErrIncompatibleConfig) {
		t.Errorf("max mismatch: %v", err)
	}
	if _, _, err := DecodeClusterConfig("north", 255, []byte(`{"id":0}`)); !errors.Is(err, ErrInvalidClusterID) {
		t.Errorf("id 0: %v", err)
	}
	if _, _, err := DecodeClusterConfig("north", 255, []byte(`{"id":7}`)); err != nil {
		t.Errorf("config without capabilities means max 255: %v", err)
	}
	if _, _, err := DecodeClusterConfig("north", 255, []byte(`{"id":`)); !errors.Is(err, ErrMalformedValue) {
		t.Errorf("truncated: %v", err)
	}
}

func TestParseKey(t *testing.T) {
	for _, tc := range []struct {
		kind Kind
		key  string
		err  error
		want ParsedKey
	}{
		{Nodes, "cilium/state/nodes/v1/east/node-1", nil, ParsedKey{Kind: Nodes, Cluster: "east", Name: "node-1"}},
		{Services, "cilium/state/services/v1/east/shop/checkout", nil, ParsedKey{Kind: Services, Cluster: "east", Namespace: "shop", Name: "checkout"}},
		{IPCache, "cilium/state/ip/v1/default/10.0.0.1", nil, ParsedKey{Kind: IPCache, Name: "10.0.0.1"}},
		{IPCache, "cilium/state/ip/v1/default/10.1.0.0/16", nil, ParsedKey{Kind: IPCache, Name: "10.1.0.0/16"}},
		{Identities, "cilium/state/identities/v1/id/65537", nil, ParsedKey{Kind: Identities, ID: 65537}},
		{Nodes, "cilium/state/nodes/v1/east2/node-1", ErrMalformedKey, ParsedKey{}},
		{Nodes, "cilium/state/nodes/v1/east/a/b", ErrMalformedKey, ParsedKey{}},
		{Nodes, "cilium/state/nodes/v1/east/..", ErrMalformedKey, ParsedKey{}},
		{Nodes, "cilium/state/nodes/v1/east/", ErrMalformedKey, ParsedKey{}},
		{Services, "cilium/state/services/v1/east/shop", ErrMalformedKey, ParsedKey{}},
		{Services, "cilium/state/services/v1/east/shop/../x", ErrMalformedKey, ParsedKey{}},
		{Identities, "cilium/state/identities/v1/id/0065537", ErrMalformedKey, ParsedKey{}},
		{Identities, "cilium/state/identities/v1/id/-1", ErrMalformedKey, ParsedKey{}},
		{IPCache, "cilium/state/ip/v1/default/a/b/c", ErrMalformedKey, ParsedKey{}},
		{Nodes, "cilium/state/nodes/v1/east/\xff", ErrMalformedKey, ParsedKey{}},
		{Nodes, "cilium/state/nodes/v1/east/" + strings.Repeat("a", MaxKeyBytes), ErrMalformedKey, ParsedKey{}},
	} {
		got, err := ParseKey(tc.kind, "east", tc.key)
		if !errors.Is(err, tc.err) || (tc.err == nil && got != tc.want) {
			t.Errorf("ParseKey(%v, %q) = %+v, %v; want %+v, %v", tc.kind, tc.key, got, err, tc.want, tc.err)
		}
	}
	if k := ServiceKey("east", "shop", "checkout"); k != "cilium/state/services/v1/east/shop/checkout" {
		t.Errorf("ServiceKey = %q", k)
	}
	if k := SyncedKey("east", IPCache); k != "cilium/synced/east/cilium/state/ip/v1" {
		t.Errorf("SyncedKey = %q", k)
	}
}

func TestNodeRoundTripAndChecks(t *testing.T) {
	n := &Node{Name: "n1", Cluster: "east", ClusterID: 1,
		IPAddresses:   []NodeAddress{{Type: InternalIP, IP: netip.MustParseAddr("192.168.1.1")}},
		IPv4AllocCIDR: &CIDR{netip.MustParsePrefix("10.1.0.0/24")}}
	v, err := EncodeNode(n)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeNode(east, NodeKey("east", "n1"), v)
	if err != nil {
		t.Fatal(err)
	}
	if got.IPv4AllocCIDR.Prefix != n.IPv4AllocCIDR.Prefix || got.PrimaryIP() != netip.MustParseAddr("192.168.1.1") {
		t.Errorf("round trip: %+v", got)
	}
	for name, mut := range map[string]func(*Node){
		"other cluster": func(n *Node) { n.Cluster = "west" },
		"other id":      func(n *Node) { n.ClusterID = 2 },
		"other name":    func(n *Node) { n.Name = "n2" },
	} {
		bad := *n
		mut(&bad)
		v, _ := EncodeNode(&bad)
		if _, err := DecodeNode(east, NodeKey("east", "n1"), v); !errors.Is(err, ErrClusterMismatch) {
			t.Errorf("%s: %v", name, err)
		}
	}
	raw := `{"Name":"n1","Cluster":"east","ClusterID":1,"IPv4AllocCIDR":{"IP":"10.1.0.0","Mask":"/wD/AA=="}}`
	if _, err := DecodeNode(east, NodeKey("east", "n1"), []byte(raw)); !errors.Is(err, ErrInvalidAddress) {
		t.Errorf("non-contiguous mask: %v", err)
	}
	raw = `{"Name":"n1","Cluster":"east","ClusterID":1,"IPAddresses":[{"Type":"InternalIP","IP":"fe80::1%eth0"}]}`
	if _, err := DecodeNode(east, NodeKey("east", "n1"), []byte(raw)); !errors.Is(err, ErrInvalidAddress) {
		t.Errorf("zone: %v", err)
	}
	raw = `{"Name":"n1","Cluster":"east","ClusterID":1,"WireguardPubKey":"bm90LWEta2V5"}`
	if _, err := DecodeNode(east, NodeKey("east", "n1"), []byte(raw)); !errors.Is(err, ErrMalformedValue) {
		t.Errorf("bad wireguard key: %v", err)
	}
}

func TestIPIdentityPair(t *testing.T) {
	ok := func(key, value string) {
		t.Helper()
		if _, err := DecodeIPIdentityPair(east, key, []byte(value)); err != nil {
			t.Errorf("DecodeIPIdentityPair(%s, %s): %v", key, value, err)
		}
	}
	bad := func(key, value string, want error) {
		t.Helper()
		if _, err := DecodeIPIdentityPair(east, key, []byte(value)); !errors.Is(err, want) {
			t.Errorf("DecodeIPIdentityPair(%s, %s) = %v, want %v", key, value, err, want)
		}
	}
	ok(IPCacheKey("10.1.0.5"), `{"IP":"10.1.0.5","Mask":null,"HostIP":"192.168.1.1","ID":65600,"Key":0,"Metadata":""}`)
	ok(IPCacheKey("10.1.0.5"), `{"IP":"10.1.0.5","ID":2}`) // reserved world
	ok(IPCacheKey("10.1.0.0/24"), `{"IP":"10.1.0.0","Mask":"////AA==","ID":65600}`)
	ok(IPCacheKey("fd00::5"), `{"IP":"fd00::5","ID":65600}`)
	bad(IPCacheKey("10.1.0.5"), `{"IP":"10.1.0.5","ID":131072}`, ErrIdentityOutOfRange)
	bad(IPCacheKey("10.1.0.5"), `{"IP":"10.1.0.5","ID":0}`, ErrIdentityOutOfRange)
	bad(IPCacheKey("10.1.0.5"), `{"IP":"10.1.0.6","ID":65600}`, ErrInvalidAddress)
	bad(IPCacheKey("10.1.0.5"), `{"IP":"not-an-ip","ID":65600}`, ErrMalformedValue)
	bad(IPCacheKey("10.1.0.5"), `{"IP":"10.1.0.5","HostIP":"fe80::1%eth0","ID":65600}`, ErrInvalidAddress)
	bad(IPCacheKey("10.1.0.5"), `{"IP":"10.1.0.5","ID":65600}}`, ErrMalformedValue)
	bad(IPCacheKey("10.1.0.5"), "\xff\xfe", ErrMalformedValue)
	bad(IPCacheKey("10.1.0.5"), `"`+strings.Repeat("a", MaxValueBytes)+`"`, ErrValueTooLarge)
	bad(IPCacheKey("10.1.0.0/24"), `{"IP":"10.1.0.0","ID":65600}`, ErrInvalidAddress)
	bad(IPCacheKey("0.0.0.0/0"), `{"IP":"0.0.0.0","Mask":"AAAAAA==","ID":65600}`, ErrInvalidAddress)
	bad(IPCacheKey("fd00::/16"), `{"IP":"fd00::","Mask":"//8AAAAAAAAAAAAAAAAAAA==","ID":65600}`, ErrInvalidAddress)
	bad(IPCacheKey("10.1.0.5"), `{"IP":"10.1.0.5","ID":1}`, ErrIdentityOutOfRange) // host is never remote
}

func TestServiceChecks(t *testing.T) {
	s := &ClusterService{Cluster: "east", Namespace: "shop", Name: "checkout", ClusterID: 1, Shared: true,
		Frontends: map[string]PortConfiguration{"10.96.0.10": {"http": {Protocol: "TCP", Port: 80}}},
		Backends:  map[string]PortConfiguration{"10.1.0.5": {"http": {Protocol: "TCP", Port: 8080}}}}
	key := ServiceKey("east", "shop", "checkout")
	v, _ := EncodeService(s)
	if _, err := DecodeService(east, key, v); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		mut  func(*ClusterService)
		want error
	}{
		"cluster":    {func(s *ClusterService) { s.Cluster = "west" }, ErrClusterMismatch},
		"cluster id": {func(s *ClusterService) { s.ClusterID = 9 }, ErrClusterMismatch},
		"name":       {func(s *ClusterService) { s.Name = "cart" }, ErrClusterMismatch},
		"backend ip": {func(s *ClusterService) {
			s.Backends = map[string]PortConfiguration{"10.1.0": {"http": {Protocol: "TCP", Port: 1}}}
		}, ErrInvalidAddress},
		"backend zone": {func(s *ClusterService) {
			s.Backends = map[string]PortConfiguration{"fe80::1%lo": {"http": {Protocol: "TCP", Port: 1}}}
		}, ErrInvalidAddress},
		"port zero": {func(s *ClusterService) {
			s.Frontends = map[string]PortConfiguration{"10.96.0.1": {"http": {Protocol: "TCP"}}}
		}, ErrMalformedValue},
		"protocol": {func(s *ClusterService) {
			s.Frontends = map[string]PortConfiguration{"10.96.0.1": {"http": {Protocol: "ICMP", Port: 1}}}
		}, ErrMalformedValue},
	} {
		b := *s
		tc.mut(&b)
		v, _ := EncodeService(&b)
		if _, err := DecodeService(east, key, v); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
}

func TestLabelsAndIdentity(t *testing.T) {
	ls := NewLabels("k8s", map[string]string{"app": "web", "io.kubernetes.pod.namespace": "shop"}).
		With(Label{Source: "k8s", Key: ClusterLabel, Value: "east"})
	want := "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=east;k8s:io.kubernetes.pod.namespace=shop;"
	if ls.String() != want {
		t.Fatalf("String() = %q, want %q", ls, want)
	}
	back, err := ParseLabels(want)
	if err != nil || back.String() != want {
		t.Fatalf("ParseLabels round trip: %q %v", back, err)
	}
	id, err := DecodeIdentity(east, IdentityKey(65600), []byte(want))
	if err != nil || id.ID != 65600 {
		t.Fatalf("DecodeIdentity: %+v %v", id, err)
	}
	for _, tc := range []struct {
		id    uint32
		value string
		want  error
	}{
		{131072, want, ErrIdentityOutOfRange},
		{5, want, ErrIdentityOutOfRange}, // reserved identities are never published by a cluster
		{65600, "k8s:app=web;", ErrClusterMismatch},
		{65600, "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=west;", ErrClusterMismatch},
		{65600, "k8s:app=web", ErrInvalidLabels},
		{65600, "app=web;", ErrInvalidLabels},
		{65600, "k8s:app=a;k8s:app=b;", ErrInvalidLabels},
		{65600, "k8s:app=\xff;", ErrInvalidLabels},
	} {
		if _, err := DecodeIdentity(east, IdentityKey(tc.id), []byte(tc.value)); !errors.Is(err, tc.want) {
			t.Errorf("DecodeIdentity(%d, %q) = %v, want %v", tc.id, tc.value, err, tc.want)
		}
	}
}

func TestReason(t *testing.T) {
	_, err := DecodeIdentity(east, IdentityKey(999999), []byte("x"))
	if Reason(err) != "identity_out_of_range" {
		t.Errorf("Reason = %q", Reason(err))
	}
	if Reason(errors.New("x")) != "other" {
		t.Error("unknown error should be other")
	}
}
