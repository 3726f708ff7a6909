package wire

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
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

// maxConnectedClusters must be equal on both sides, in both directions:
// the identity ranges of a 255 and a 511 cluster overlap other clusters'.
// The error says which side runs with what, and what to change.
func TestClusterConfigMaxConnectedClusters(t *testing.T) {
	same := "same value on both clusters"
	for _, tc := range []struct {
		local, remote uint32
		ok            bool
		says          []string
	}{
		{255, 255, true, nil},
		{255, 511, false, []string{"ranges of 32768 per cluster id, ours in ranges of 65536", same}},
		{511, 511, true, nil},
		{511, 255, false, []string{"ranges of 65536 per cluster id, ours in ranges of 32768", same}},
		{511, 0, false, []string{"maxConnectedClusters 255, this cluster with 511", same}}, // absent means 255
		{255, 300, false, []string{"maxConnectedClusters 300"}},
	} {
		v := fmt.Sprintf(`{"id":200,"capabilities":{"maxConnectedClusters":%d}}`, tc.remote)
		c, _, err := DecodeClusterConfig("north", tc.local, []byte(v))
		if tc.ok {
			if err != nil || c.MaxConnectedClusters != tc.local || c.ID != 200 {
				t.Errorf("local %d, remote %d: %+v, %v", tc.local, tc.remote, c, err)
			}
			continue
		}
		if !errors.Is(err, ErrIncompatibleConfig) || Reason(err) != "incompatible_config" {
			t.Errorf("local %d, remote %d: %v, want %v", tc.local, tc.remote, err, ErrIncompatibleConfig)
			continue
		}
		for _, want := range append(tc.says, `cluster "north"`) {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("local %d, remote %d: %q does not say %q", tc.local, tc.remote, err, want)
			}
		}
	}
}

// Cilium v1.20's endpointSlicesExportMode: its three values are read, any
// other refuses the config (as Cilium's ValidateRemoteConfig does).
func TestClusterConfigEndpointSlicesExportMode(t *testing.T) {
	for mode, want := range map[string]EndpointSlicesExportMode{
		``: ExportServicesOnly, `,"endpointSlicesExportMode":""`: ExportServicesOnly,
		`,"endpointSlicesExportMode":"services-and-endpointslices"`: ExportServicesAndEndpointSlices,
		`,"endpointSlicesExportMode":"endpointslices-only"`:         ExportEndpointSlicesOnly,
	} {
		v := []byte(`{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255` + mode + `}}`)
		if _, _, err := DecodeClusterConfig("north", 255, v); err != nil {
			t.Errorf("%s: %v", v, err)
		}
		if got, err := DecodeEndpointSlicesExportMode(v); err != nil || got != want {
			t.Errorf("%s: mode %q, %v; want %q", v, got, err, want)
		}
	}
	if !ExportServicesAndEndpointSlices.ExportsServices() || ExportEndpointSlicesOnly.ExportsServices() || !ExportServicesOnly.ExportsServices() {
		t.Error("ExportsServices")
	}
	v := []byte(`{"id":3,"capabilities":{"endpointSlicesExportMode":"slices-please"}}`)
	if _, _, err := DecodeClusterConfig("north", 255, v); !errors.Is(err, ErrIncompatibleConfig) || !strings.Contains(err.Error(), "slices-please") {
		t.Errorf("unknown mode: %v", err)
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
		{IPCache, "cilium/state/ip/v1/default/10.0.0.1", nil, ParsedKey{Kind: IPCache, Name: "10.0.0.1", Prefix: netip.MustParsePrefix("10.0.0.1/32")}},
		{IPCache, "cilium/state/ip/v1/default/10.1.0.0/16", nil, ParsedKey{Kind: IPCache, Name: "10.1.0.0/16", Prefix: netip.MustParsePrefix("10.1.0.0/16")}},
		{Identities, "cilium/state/identities/v1/id/65537", nil, ParsedKey{Kind: Identities, ID: 65537}},
		{Nodes, "cilium/state/nodes/v1/east2/node-1", ErrMalformedKey, ParsedKey{}},
		{Nodes, "cilium/state/nodes/v1/east/a/b", ErrMalformedKey, ParsedKey{}},
		{Nodes, "cilium/state/nodes/v1/east/..", ErrMalformedKey, ParsedKey{}},
		{Nodes, "cilium/state/nodes/v1/east/", ErrMalformedKey, ParsedKey{}},
		{Services, "cilium/state/services/v1/east/shop", ErrMalformedKey, ParsedKey{}},
		{Services, "cilium/state/services/v1/east/shop/../x", ErrMalformedKey, ParsedKey{}},
		{Identities, "cilium/state/identities/v1/id/0065537", ErrNonCanonicalKey, ParsedKey{}},
		{Identities, "cilium/state/identities/v1/id/+65537", ErrMalformedKey, ParsedKey{}},
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
}

// A remote's entry with the host identity is its own node as it sees it:
// accepted, and a remote node here (Cilium: pkg/ipcache/kvstore.go,
// IPIdentityWatcher.OnUpdate). The other reserved identities keep theirs.
func TestIPCacheHostIdentityIsRemoteNode(t *testing.T) {
	for in, want := range map[uint32]uint32{IdentityHost: IdentityRemoteNode, IdentityWorld: IdentityWorld, IdentityRemoteNode: IdentityRemoteNode, 4: 4, 255: 255} {
		v := fmt.Sprintf(`{"IP":"192.168.1.1","HostIP":"192.168.1.1","ID":%d}`, in)
		p, err := DecodeIPIdentityPair(east, IPCacheKey("192.168.1.1"), []byte(v))
		if err != nil {
			t.Errorf("identity %d: %v", in, err)
			continue
		}
		if p.ID != want {
			t.Errorf("identity %d decoded as %d, want %d", in, p.ID, want)
		}
	}
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
		"terminating not a backend": {func(s *ClusterService) { s.Terminating = []string{"10.1.0.6"} }, ErrInvalidAddress},
		"terminating a frontend":    {func(s *ClusterService) { s.Terminating = []string{"10.96.0.10"} }, ErrInvalidAddress},
		"terminating not canonical": {func(s *ClusterService) { s.Terminating = []string{"10.1.0.05"} }, ErrInvalidAddress},
		"terminating twice":         {func(s *ClusterService) { s.Terminating = []string{"10.1.0.5", "10.1.0.5"} }, ErrMalformedValue},
	} {
		b := *s
		tc.mut(&b)
		v, _ := EncodeService(&b)
		if _, err := DecodeService(east, key, v); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
}

// A terminating backend round-trips under Cilium-ignored
// "clustermesh.io/terminating"; a value without it (an older apiserver)
// decodes with none terminating.
func TestServiceTerminating(t *testing.T) {
	s := &ClusterService{Cluster: "east", Namespace: "shop", Name: "checkout", ClusterID: 1, Shared: true,
		Backends: map[string]PortConfiguration{
			"10.1.0.5": {"http": {Protocol: "TCP", Port: 8080}},
			"10.1.0.6": {"http": {Protocol: "TCP", Port: 8080}},
			"fd00::6":  {"http": {Protocol: "TCP", Port: 8080}}},
	}
	for _, ip := range []string{"fd00::6", "10.1.0.6", "fd00::6"} {
		s.AddTerminating(ip)
	}
	key := ServiceKey("east", "shop", "checkout")
	v, err := EncodeService(s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(v), `"clustermesh.io/terminating":["10.1.0.6","fd00::6"]`) {
		t.Fatalf("encoded without %s: %s", TerminatingField, v)
	}
	got, err := DecodeService(east, key, v)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.1.0.6", "fd00::6"}; !slices.Equal(got.Terminating, want) {
		t.Errorf("Terminating = %q, want %q", got.Terminating, want)
	}
	s.Terminating = nil
	v, _ = EncodeService(s)
	if strings.Contains(string(v), TerminatingField) {
		t.Errorf("none terminating, yet encoded: %s", v)
	}
	if got, err := DecodeService(east, key, v); err != nil || got.Terminating != nil {
		t.Errorf("without the field: %v, %q; want none terminating", err, got.Terminating)
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
		{65600, "k8s:app=web;unspec:io.cilium.k8s.policy.cluster=east;", ErrClusterMismatch},    // a label of another source, as Cilium refuses
		{65600, "k8s:app=web;container:io.cilium.k8s.policy.cluster=east;", ErrClusterMismatch}, // (clusterNameValidator)
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

// TestIPCacheKeysCanonical: an ipcache key is accepted only in the one
// spelling of the prefix it names. Every other spelling of a prefix is
// rejected as non-canonical, on a put (DecodeIPIdentityPair) as on a delete
// (ParseKey), so that a peer cannot remove a valid entry by deleting an
// alias of its key.
func TestIPCacheKeysCanonical(t *testing.T) {
	for _, tc := range []struct{ suffix, prefix string }{
		{"10.2.1.7", "10.2.1.7/32"},
		{"10.1.0.0/16", "10.1.0.0/16"},
		{"10.1.2.0/24", "10.1.2.0/24"},
		{"0.0.0.0", "0.0.0.0/32"},
		{"fd00::5", "fd00::5/128"},
		{"fd00:1:2:3:4:5:6:7", "fd00:1:2:3:4:5:6:7/128"},
		{"fd00::1:0:0:5", "fd00::1:0:0:5/128"},
		{"fd00:0:0:1::/64", "fd00:0:0:1::/64"},
		{"::1", "::1/128"},
		{"::", "::/128"},
	} {
		pk, err := ParseKey(IPCache, "east", IPCacheKey(tc.suffix))
		if err != nil || pk.Prefix != netip.MustParsePrefix(tc.prefix) || pk.Name != tc.suffix {
			t.Errorf("ParseKey(%q) = %+v, %v; want prefix %s", tc.suffix, pk, err, tc.prefix)
		}
		if k := IPCachePrefixKey(netip.MustParsePrefix(tc.prefix)); k != IPCacheKey(tc.suffix) {
			t.Errorf("IPCachePrefixKey(%s) = %q, want %q", tc.prefix, k, IPCacheKey(tc.suffix))
		}
	}
	for _, tc := range []struct {
		suffix string
		canon  string // the prefix the alias names, or "" for a key that names none
	}{
		{"10.2.1.7/32", "10.2.1.7/32"},               // a single address with its full length
		{"fd00::5/128", "fd00::5/128"},               //
		{"::ffff:10.2.1.8", "10.2.1.8/32"},           // IPv4-mapped IPv6
		{"::ffff:10.2.1.8/128", "10.2.1.8/32"},       //
		{"::ffff:10.2.0.0/112", "10.2.0.0/16"},       //
		{"::ffff:a02:108", "10.2.1.8/32"},            //
		{"FD00::5", "fd00::5/128"},                   // upper case
		{"fd00::0005", "fd00::5/128"},                // leading zeros
		{"fd00:0:0:0:0:0:0:5", "fd00::5/128"},        // not compressed
		{"fd00:0::5", "fd00::5/128"},                 //
		{"fd00:0:0:1:0:0:0:0/64", "fd00:0:0:1::/64"}, //
		{"fd00::1:0:0:0:5", "fd00:0:0:1::5/128"},     // the longest run of zeros compressed
		{"10.1.0.5/16", "10.1.0.0/16"},               // host bits set
		{"fd00::5/64", "fd00::/64"},                  //
		{"fe80::1%eth0", "fe80::1/128"},              // a zone
		{"010.2.1.7", ""},                            // leading zeros in IPv4: no Go parser reads it
		{"10.2.1.7/032", ""},                         //
		{"10.2.1.7/33", ""},                          //
		{"fe80::1%eth0/64", ""},                      //
		{"10.2.1", ""},                               //
		{"junk-1", ""},                               //
		{" 10.2.1.7", ""},                            //
	} {
		key := IPCacheKey(tc.suffix)
		_, err := ParseKey(IPCache, "east", key)
		if tc.canon == "" {
			if !errors.Is(err, ErrMalformedKey) || Reason(err) != "malformed_key" {
				t.Errorf("ParseKey(%q) = %v, want %v", tc.suffix, err, ErrMalformedKey)
			}
			continue
		}
		pfx := netip.MustParsePrefix(tc.canon)
		canonKey := IPCachePrefixKey(pfx)
		if !errors.Is(err, ErrNonCanonicalKey) || !strings.Contains(err.Error(), fmt.Sprintf("%q", strings.TrimPrefix(canonKey, IPCacheKey("")))) {
			t.Errorf("ParseKey(%q) = %v, want %v naming %q", tc.suffix, err, ErrNonCanonicalKey, canonKey)
		}
		// A put of the alias with a value for the very prefix it names is
		// rejected for the key's sake, and counted under its own reason; the
		// same value under the canonical key is accepted.
		v, _ := EncodeIPIdentityPair(&IPIdentityPair{IP: pfx.Addr(), Mask: maskOf(pfx), ID: 65600})
		if _, err := DecodeIPIdentityPair(east, key, v); !errors.Is(err, ErrNonCanonicalKey) || Reason(err) != "non_canonical_key" {
			t.Errorf("DecodeIPIdentityPair(%q, %s) = %v (reason %s), want %v", tc.suffix, v, err, Reason(err), ErrNonCanonicalKey)
		}
		if got, err := DecodeIPIdentityPair(east, canonKey, v); err != nil || got.Prefix() != pfx {
			t.Errorf("DecodeIPIdentityPair(%q, %s) = %+v, %v", canonKey, v, got, err)
		}
	}
	// A publisher keying by an address it was given mapped still writes the
	// canonical key.
	if k := IPCachePrefixKey(netip.PrefixFrom(netip.MustParseAddr("::ffff:10.2.1.8"), 128)); k != IPCacheKey("10.2.1.8") {
		t.Errorf("IPCachePrefixKey(::ffff:10.2.1.8/128) = %q", k)
	}
}

// maskOf is the IPIdentityPair mask of p: nil for a single address.
func maskOf(p netip.Prefix) []byte {
	if p.IsSingleIP() {
		return nil
	}
	m := make([]byte, p.Addr().BitLen()/8)
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// TestKeysOneToOne: node, service and identity keys have no aliases either:
// a key that parses is the very key its parts build.
func TestKeysOneToOne(t *testing.T) {
	for _, tc := range []struct {
		kind Kind
		key  string
		want error
	}{
		{Nodes, "cilium/state/nodes/v1/east/node-1", nil},
		{Nodes, "cilium/state/nodes/v1/east//node-1", ErrMalformedKey},
		{Nodes, "cilium/state/nodes/v1/east/./node-1", ErrMalformedKey},
		{Nodes, "cilium/state/nodes/v1/east/node-1/", ErrMalformedKey},
		{Services, "cilium/state/services/v1/east/shop/checkout", nil},
		{Services, "cilium/state/services/v1/east/shop//checkout", ErrMalformedKey},
		{Services, "cilium/state/services/v1/east/shop/checkout/", ErrMalformedKey},
		{Identities, "cilium/state/identities/v1/id/65537", nil},
		{Identities, "cilium/state/identities/v1/id/065537", ErrNonCanonicalKey},
		{Identities, "cilium/state/identities/v1/id/00", ErrNonCanonicalKey},
		{Identities, "cilium/state/identities/v1/id/0x10001", ErrMalformedKey},
		{Identities, "cilium/state/identities/v1/id/65537/", ErrMalformedKey},
	} {
		pk, err := ParseKey(tc.kind, "east", tc.key)
		if !errors.Is(err, tc.want) {
			t.Errorf("ParseKey(%v, %q) = %v, want %v", tc.kind, tc.key, err, tc.want)
			continue
		}
		if err == nil {
			if again := buildKey(pk); again != tc.key {
				t.Errorf("ParseKey(%v, %q) = %+v, which builds %q", tc.kind, tc.key, pk, again)
			}
		}
	}
}

// buildKey is the key of pk's parts.
func buildKey(pk ParsedKey) string {
	switch pk.Kind {
	case Nodes:
		return NodeKey(pk.Cluster, pk.Name)
	case Services:
		return ServiceKey(pk.Cluster, pk.Namespace, pk.Name)
	case IPCache:
		return IPCachePrefixKey(pk.Prefix)
	case Identities:
		return IdentityKey(pk.ID)
	}
	return ""
}
