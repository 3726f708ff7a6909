package kubemesh

import (
	"context"
	"maps"
	"net/netip"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/internal/kubetest"
)

// The connection modes' directions, and the overlap checks on their own.
func TestKubeLinksAndOverlaps(t *testing.T) {
	a, b, c := &meshMember{name: "a"}, &meshMember{name: "b"}, &meshMember{name: "c"}
	for mode, want := range map[string]int{ModeBidirectional: 4, ModeUnicast: 2, ModeMesh: 6} {
		if ls := links(mode, a, []*meshMember{b, c}); len(ls) != want {
			t.Errorf("%s: %d links, want %d", mode, len(ls), want)
		}
	}
	p := func(s string) owned[netip.Prefix] { return owned[netip.Prefix]{netip.MustParsePrefix(s), "n"} }
	ip := func(s string) owned[netip.Addr] { return owned[netip.Addr]{netip.MustParseAddr(s), "n"} }
	a.podCIDRs, a.nodeIPs = []owned[netip.Prefix]{p("10.1.0.0/16"), p("fd00:1::/64")}, []owned[netip.Addr]{ip("192.168.0.1")}
	b.podCIDRs, b.nodeIPs = []owned[netip.Prefix]{p("10.2.0.0/16"), p("fd00:2::/64")}, []owned[netip.Addr]{ip("192.168.0.2")}
	if errs := overlaps(a, b); len(errs) != 0 {
		t.Errorf("disjoint clusters: %v", errs)
	}
	b.podCIDRs = append(b.podCIDRs, p("fd00:1::/48"))
	b.nodeIPs = append(b.nodeIPs, ip("10.1.2.3"))
	if errs := overlaps(a, b); len(errs) != 2 {
		t.Errorf("IPv6 pod CIDR overlap and a node IP in a pod CIDR: %v", errs)
	}
}

// Options that cannot work are refused before any request.
func TestKubeConnectOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		o    ConnectOptions
		want string
	}{
		{ConnectOptions{}, "--destination-context"},
		{ConnectOptions{Destinations: []string{"b"}, Mode: "star"}, "--connection-mode"},
		{ConnectOptions{Destinations: []string{"b", "c"}, DestinationEndpoints: []string{"https://192.0.2.1:2379"}}, "one per destination"},
	} {
		if err := tc.o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.o, err, tc.want)
		}
	}
	if err := (ConnectOptions{Destinations: []string{"b"}}).Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

// Every preflight failure is reported at once, says how to fix it, and
// nothing is written.
func TestK8sConnectPreflight(t *testing.T) {
	env := kubetest.Start(t, "a", "b", "c")
	ctx := context.Background()
	a, b, c := env.Cluster("a"), env.Cluster("b"), env.Cluster("c")
	for _, n := range []struct {
		c    *kubetest.Cluster
		node kubetest.Node
	}{
		{a, kubetest.Node{Name: "a1", InternalIP: "192.168.0.1", PodCIDRs: []string{"10.0.0.0/16"}}},
		{b, kubetest.Node{Name: "b1", InternalIP: "192.168.0.1", PodCIDRs: []string{"10.0.1.0/24"}}},
		{c, kubetest.Node{Name: "c1", InternalIP: "10.0.200.1", PodCIDRs: []string{"10.3.0.0/24"}}},
	} {
		if _, err := n.c.CreateNode(ctx, n.node); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range []EnableOptions{
		{Context: "a", ClusterName: "a", ClusterID: 1},
		{Context: "b", ClusterName: "b", ClusterID: 1}, // its own CA, a's id
		{Context: "c", ClusterName: "a", ClusterID: 3, CAFromContext: "a", ServiceType: "NodePort"},
	} {
		o.Kubeconfig = env.Kubeconfig
		if _, err := Enable(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	connect := func(o ConnectOptions) error {
		o.Kubeconfig = env.Kubeconfig
		res, err := Connect(ctx, o)
		if err == nil || len(res.Steps) != 0 {
			t.Errorf("connect %+v: %v, steps %+v: want an error and no step", o, err, res.Steps)
		}
		return err
	}
	// Not enabled at all.
	if err := connect(ConnectOptions{Context: "a", Destinations: []string{"nowhere"}}); !strings.Contains(err.Error(), "no context") {
		t.Errorf("unknown context: %v", err)
	}
	ns := DefaultNamespace
	before := map[string]map[string]string{"a": versions(t, a, ns), "b": versions(t, b, ns), "c": versions(t, c, ns)}

	err := connect(ConnectOptions{Context: "a", Destinations: []string{"b"}})
	for _, want := range []string{
		"nothing was written",
		"both have cluster id 1", "--cluster-id",
		"different mesh CAs", "--ca-from-context a", "--allow-mismatching-ca",
		"overlaps pod CIDR 10.0.1.0/24 of node b1 in cluster b",
		"both have the address 192.168.0.1",
		"no LoadBalancer address yet", "--destination-endpoint",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("a-b: error lacks %q:\n%v", want, err)
		}
	}
	// c is a NodePort: its endpoint is its node's IP, which its certificate
	// names; one given by hand that it does not name would be added to it,
	// were it not for the other problems.
	err = connect(ConnectOptions{Context: "a", Destinations: []string{"c"}, Mode: ModeUnicast, DestinationEndpoints: []string{"https://203.0.113.7:2379"}})
	for _, want := range []string{
		`both cluster "a"`, "--cluster-name",
		"node c1 of cluster a has the address 10.0.200.1, inside pod CIDR 10.0.0.0/16",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("a-c: error lacks %q:\n%v", want, err)
		}
	}
	after := map[string]map[string]string{"a": versions(t, a, ns), "b": versions(t, b, ns), "c": versions(t, c, ns)}
	for k := range before {
		if !maps.Equal(before[k], after[k]) {
			t.Errorf("cluster %s changed by a refused connect:\nbefore %v\nafter  %v", k, before[k], after[k])
		}
	}
}
