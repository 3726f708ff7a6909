package policy

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/wire"
)

func ident(cluster, ns string, labels map[string]string) wire.Labels {
	return wire.NewLabels("k8s", labels).
		With(wire.Label{Source: "k8s", Key: NamespaceLabel, Value: ns}).
		With(wire.Label{Source: "k8s", Key: wire.ClusterLabel, Value: cluster})
}

func TestSelectorSemantics(t *testing.T) {
	web := ident("east", "shop", map[string]string{"app": "web", "tier": "front"})
	for _, tc := range []struct {
		name string
		sel  Selector
		want bool
	}{
		{"empty selects all", Selector{}, true},
		{"matchLabels", Selector{MatchLabels: map[string]string{"app": "web"}}, true},
		{"matchLabels other value", Selector{MatchLabels: map[string]string{"app": "db"}}, false},
		{"source prefix", Selector{MatchLabels: map[string]string{"k8s:app": "web"}}, true},
		{"other source", Selector{MatchLabels: map[string]string{"reserved:app": "web"}}, false},
		{"any source", Selector{MatchLabels: map[string]string{"any:app": "web"}}, true},
		{"cluster label", Selector{MatchLabels: map[string]string{wire.ClusterLabel: "east"}}, true},
		{"other cluster", Selector{MatchLabels: map[string]string{wire.ClusterLabel: "west"}}, false},
		{"namespace label", Selector{MatchLabels: map[string]string{"k8s:" + NamespaceLabel: "shop"}}, true},
		{"In", Selector{MatchExpressions: []Requirement{{Key: "tier", Operator: OpIn, Values: []string{"back", "front"}}}}, true},
		{"In miss", Selector{MatchExpressions: []Requirement{{Key: "tier", Operator: OpIn, Values: []string{"back"}}}}, false},
		{"NotIn", Selector{MatchExpressions: []Requirement{{Key: "tier", Operator: OpNotIn, Values: []string{"back"}}}}, true},
		{"NotIn absent key", Selector{MatchExpressions: []Requirement{{Key: "nope", Operator: OpNotIn, Values: []string{"x"}}}}, true},
		{"Exists", Selector{MatchExpressions: []Requirement{{Key: "tier", Operator: OpExists}}}, true},
		{"Exists miss", Selector{MatchExpressions: []Requirement{{Key: "nope", Operator: OpExists}}}, false},
		{"DoesNotExist", Selector{MatchExpressions: []Requirement{{Key: "nope", Operator: OpDoesNotExist}}}, true},
		{"all must hold", Selector{MatchLabels: map[string]string{"app": "web"},
			MatchExpressions: []Requirement{{Key: "tier", Operator: OpDoesNotExist}}}, false},
	} {
		s, err := compileSelector(tc.sel, "sel")
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := s.matches(web); got != tc.want {
			t.Errorf("%s: matches = %v, want %v", tc.name, got, tc.want)
		}
	}
}

const checkoutPolicy = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: checkout-ingress, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: checkout}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend}
      matchExpressions: [{key: io.cilium.k8s.policy.cluster, operator: In, values: [east, west]}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`

// identities of a three-cluster mesh.
func meshIdentities() map[uint32]wire.Labels {
	out := map[uint32]wire.Labels{}
	for ci, c := range []string{"east", "west", "north"} {
		base := uint32(ci+1) << 16
		out[base+1] = ident(c, "shop", map[string]string{"app": "checkout"})
		out[base+2] = ident(c, "shop", map[string]string{"app": "frontend"})
		out[base+3] = ident(c, "other", map[string]string{"app": "frontend"})
	}
	return out
}

func engineWith(t *testing.T, o Options, docs string) *Engine {
	t.Helper()
	c, err := Parse(o, "test.yaml", []byte(docs))
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine(o.LocalCluster)
	for id, ls := range meshIdentities() {
		e.UpsertIdentity(id, ls)
	}
	e.SetPolicies(c)
	return e
}

func TestCrossClusterIngress(t *testing.T) {
	e := engineWith(t, Options{LocalCluster: "east", DefaultLocalCluster: true}, checkoutPolicy)
	ep := e.Endpoint(1<<16 + 1) // east checkout
	for _, tc := range []struct {
		peer  uint32
		proto uint8
		port  uint16
		want  bool
	}{
		{1<<16 + 2, TCP, 8080, true},  // east frontend
		{2<<16 + 2, TCP, 8080, true},  // west frontend
		{3<<16 + 2, TCP, 8080, false}, // north frontend: cluster not allowed
		{2<<16 + 3, TCP, 8080, false}, // west frontend in another namespace
		{2<<16 + 2, TCP, 9090, false}, // wrong port
		{2<<16 + 2, UDP, 8080, false}, // wrong protocol
		{1<<16 + 1, TCP, 8080, false}, // checkout itself
	} {
		if got := ep.Allows(tc.peer, Ingress, tc.proto, tc.port); got != tc.want {
			t.Errorf("peer %d %d/%d: allowed %v, want %v", tc.peer, tc.proto, tc.port, got, tc.want)
		}
	}
	if !ep.Allows(3<<16+2, Egress, TCP, 1) {
		t.Error("egress is not enforced: everything must be allowed")
	}
	if e.Endpoint(1<<16+2) != nil && e.Endpoint(1<<16 + 2).Enforced[Ingress] {
		t.Error("the frontend is not selected: it must stay allow-all")
	}
}

func TestDefaultLocalCluster(t *testing.T) {
	doc := strings.Replace(checkoutPolicy, "      matchExpressions: [{key: io.cilium.k8s.policy.cluster, operator: In, values: [east, west]}]\n", "", 1)
	on := engineWith(t, Options{LocalCluster: "east", DefaultLocalCluster: true}, doc).Endpoint(1<<16 + 1)
	off := engineWith(t, Options{LocalCluster: "east", DefaultLocalCluster: false}, doc).Endpoint(1<<16 + 1)
	if !on.Allows(1<<16+2, Ingress, TCP, 8080) || on.Allows(2<<16+2, Ingress, TCP, 8080) {
		t.Error("default-local-cluster on: a selector without cluster label selects the local cluster only")
	}
	if !off.Allows(2<<16+2, Ingress, TCP, 8080) || !off.Allows(3<<16+2, Ingress, TCP, 8080) {
		t.Error("default-local-cluster off: it selects every cluster")
	}
}

func TestPortsRangesEgressAndNetworkPolicy(t *testing.T) {
	doc := `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-egress, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: checkout, io.cilium.k8s.policy.cluster: west}}]
    toPorts: [{ports: [{port: "8000", endPort: 8100, protocol: TCP}, {port: "53", protocol: UDP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: other-np, namespace: other}
spec:
  podSelector: {matchLabels: {app: frontend}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}, podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: 80}]
`
	e := engineWith(t, Options{LocalCluster: "east", DefaultLocalCluster: true}, doc)
	fe := e.Endpoint(1<<16 + 2)
	for _, tc := range []struct {
		peer  uint32
		proto uint8
		port  uint16
		want  bool
	}{
		{2<<16 + 1, TCP, 8050, true}, {2<<16 + 1, TCP, 8100, true}, {2<<16 + 1, TCP, 8101, false},
		{2<<16 + 1, UDP, 53, true}, {1<<16 + 1, TCP, 8050, false},
	} {
		if got := fe.Allows(tc.peer, Egress, tc.proto, tc.port); got != tc.want {
			t.Errorf("egress to %d %d/%d: %v, want %v", tc.peer, tc.proto, tc.port, got, tc.want)
		}
	}
	other := e.Endpoint(1<<16 + 3) // east frontend in namespace other
	if !other.Allows(1<<16+2, Ingress, TCP, 80) || other.Allows(1<<16+2, Ingress, TCP, 81) || other.Allows(2<<16+2, Ingress, TCP, 80) {
		t.Error("NetworkPolicy: from shop's frontends in the local cluster on TCP 80 only")
	}
}

// Adding and removing identities one by one gives the same policy as
// computing from scratch: the incremental path is exact.
func TestIncrementalEqualsFull(t *testing.T) {
	o := Options{LocalCluster: "east", DefaultLocalCluster: true}
	c, err := Parse(o, "p", []byte(checkoutPolicy))
	if err != nil {
		t.Fatal(err)
	}
	inc := NewEngine("east")
	inc.SetPolicies(c)
	ids := meshIdentities()
	for id, ls := range ids {
		inc.UpsertIdentity(id, ls)
	}
	full := engineWith(t, o, checkoutPolicy)
	if !reflect.DeepEqual(inc.endpoints, full.endpoints) {
		t.Fatalf("incremental %v\nfull %v", inc.endpoints, full.endpoints)
	}
	// A new frontend in west is allowed at once; removing it revokes it.
	changes := inc.UpsertIdentity(2<<16+9, ident("west", "shop", map[string]string{"app": "frontend"}))
	if len(changes) != 1 || !changes[0].Add || changes[0].Key.Peer != 2<<16+9 || changes[0].Endpoint != 1<<16+1 {
		t.Errorf("new west frontend: changes %+v", changes)
	}
	changes = inc.RemoveIdentity(2<<16 + 9)
	if len(changes) != 1 || changes[0].Add {
		t.Errorf("removed west frontend: changes %+v", changes)
	}
	if !reflect.DeepEqual(inc.endpoints, full.endpoints) {
		t.Error("after add and remove, the policy differs from the full computation")
	}
}

func TestInvalidPoliciesNameFileAndField(t *testing.T) {
	for _, tc := range []struct{ doc, field string }{
		{strings.Replace(checkoutPolicy, "endpointSelector:", "endpointSelectr:", 1), "endpointSelectr"},
		{strings.Replace(checkoutPolicy, "operator: In", "operator: Near", 1), "spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator"},
		{strings.Replace(checkoutPolicy, `port: "8080"`, `port: "80800"`, 1), "spec.ingress[0].toPorts[0].ports[0].port"},
		{strings.Replace(checkoutPolicy, "protocol: TCP", "protocol: ICMP", 1), "spec.ingress[0].toPorts[0].ports[0].protocol"},
		{strings.Replace(checkoutPolicy, "kind: CiliumNetworkPolicy", "kind: Policy", 1), "kind"},
	} {
		_, err := Parse(Options{LocalCluster: "east"}, "shop.yaml", []byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), "shop.yaml") || !strings.Contains(err.Error(), tc.field) || !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("want an error naming shop.yaml and %s, got %v", tc.field, err)
		}
	}
}

// TestFigures: 1,000 new remote identities reach 1,000 local endpoints'
// policies (policy.recompute.ms, goal ≤ 200 ms).
func TestFigures(t *testing.T) {
	figure.Require(t)
	e := NewEngine("east")
	c, err := Parse(Options{LocalCluster: "east", DefaultLocalCluster: true}, "p", []byte(checkoutPolicy))
	if err != nil {
		t.Fatal(err)
	}
	e.SetPolicies(c)
	for i := 0; i < 1000; i++ {
		e.UpsertIdentity(1<<16+uint32(i), ident("east", "shop", map[string]string{"app": "checkout", "pod": fmt.Sprint(i)}))
	}
	start := time.Now()
	n := 0
	for i := 0; i < 1000; i++ {
		n += len(e.UpsertIdentity(2<<16+uint32(i), ident("west", "shop", map[string]string{"app": "frontend", "pod": fmt.Sprint(i)})))
	}
	took := time.Since(start)
	if n != 1000*1000 {
		t.Fatalf("%d entries added, want 1,000,000", n)
	}
	figure.Print("policy.recompute.ms", float64(took.Microseconds())/1000, "ms")
}

func TestAllowFromHost(t *testing.T) {
	for _, on := range []bool{true, false} {
		o := Options{LocalCluster: "east", DefaultLocalCluster: true, AllowFromHost: on}
		e := engineWith(t, o, checkoutPolicy)
		e.UpsertIdentity(wire.IdentityHost, wire.HostLabels)
		ep := e.Endpoint(1<<16 + 1)
		if got := ep.Allows(wire.IdentityHost, Ingress, UDP, 9999); got != on {
			t.Errorf("AllowFromHost %v: host → east checkout on any port allowed %v", on, got)
		}
		if ep.Allows(3<<16+2, Ingress, TCP, 8080) {
			t.Errorf("AllowFromHost %v: north's frontend allowed", on)
		}
		c, _ := Parse(o, "p", []byte(checkoutPolicy))
		if c.Rules() != 1 {
			t.Errorf("AllowFromHost %v: %d rules counted, want 1 (implicit rules are not counted)", on, c.Rules())
		}
	}
}

// A rule without peer selectors allows every peer, addresses no cluster
// knows (world) included, with one entry per port whatever the number of
// identities, and identities coming and going change none of it.
func TestRuleWithoutPeersAllowsEveryPeer(t *testing.T) {
	doc := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: checkout}}
  ingress:
  - ports: [{port: 443, protocol: TCP}]
`
	e := engineWith(t, Options{LocalCluster: "east", DefaultLocalCluster: true}, doc)
	ep := e.Endpoint(1<<16 + 1)
	for _, peer := range []uint32{wire.IdentityWorld, 3<<16 + 2, 1<<16 + 2} {
		if !ep.Allows(peer, Ingress, TCP, 443) || ep.Allows(peer, Ingress, TCP, 80) {
			t.Errorf("peer %d: want 443/TCP allowed and 80 denied", peer)
		}
	}
	want := []Key{{Peer: AnyPeer, Direction: Ingress, PortRange: PortRange{Protocol: TCP, From: 443, To: 443}}}
	if got := ep.Keys(); !slices.Equal(got, want) {
		t.Errorf("keys %v, want %v (one, for every peer)", got, want)
	}
	if ch := e.UpsertIdentity(2<<16+9, ident("west", "shop", map[string]string{"app": "x"})); len(ch) != 0 {
		t.Errorf("a new remote identity changed %v", ch)
	}
	if ch := e.RemoveIdentity(3<<16 + 2); len(ch) != 0 {
		t.Errorf("a removed remote identity changed %v", ch)
	}
}
