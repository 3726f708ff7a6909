package policy

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/wire"
)

// Identities of the mesh (meshIdentities): cluster c's checkout is
// c<<16+1, its shop frontend c<<16+2, its other-namespace frontend c<<16+3.
const (
	eastCheckout = 1<<16 + 1
	eastFrontend = 1<<16 + 2
	westFrontend = 2<<16 + 2
	northFront   = 3<<16 + 2
)

const l7Checkout = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: checkout-read, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: checkout}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: west}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/v1/.*"}
        - {method: GET, path: "/healthz", headers: ["X-Probe"], headerMatches: [{name: X-Env, value: prod}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: checkout-cart, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: checkout}}
  ingress:
  - fromEndpoints:
    - matchExpressions: [{key: io.cilium.k8s.policy.cluster, operator: In, values: [west, north]}]
      matchLabels: {app: frontend}
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: POST, path: /v1/cart}]
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`

func tcp8080(peer uint32) Key {
	return Key{Peer: peer, Direction: Ingress, PortRange: PortRange{Protocol: TCP, From: 8080, To: 8080}}
}

func httpRules(p *L7Policy) []string {
	if p == nil {
		return nil
	}
	var out []string
	for _, r := range p.HTTP {
		out = append(out, r.Method+" "+r.Path)
	}
	return out
}

// L7 rules of several policies on one port are ORed per peer; an L3/L4 rule
// for the same peer and port adds the wildcard (every request allowed, the
// port still proxied); peers that only a plain rule allows have no L7.
func TestL7RulesMergedAcrossPolicies(t *testing.T) {
	e := engineWith(t, Options{LocalCluster: "east", DefaultLocalCluster: true}, l7Checkout)
	ep := e.Endpoint(eastCheckout)
	for _, tc := range []struct {
		name string
		peer uint32
		want []string // nil: allowed without L7
	}{
		{"west: both policies", westFrontend, []string{"GET /healthz", "GET /v1/.*", "POST /v1/cart"}},
		{"north: the cart policy", northFront, []string{"POST /v1/cart"}},
		{"east: plain rule only", eastFrontend, nil},
	} {
		k := tcp8080(tc.peer)
		if !ep.has(k) {
			t.Fatalf("%s: not allowed", tc.name)
		}
		p := ep.L7(k)
		if got := httpRules(p); !slices.Equal(got, tc.want) {
			t.Errorf("%s: rules %q, want %q", tc.name, got, tc.want)
		}
		if tc.want != nil && (p.Parser != ParserHTTP || p.AllowsAll()) {
			t.Errorf("%s: %v", tc.name, p)
		}
	}
	// A plain rule for west on the same port: west's requests all pass,
	// still through the proxy.
	plain := `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: west-plain, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: checkout}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: west}}]
    toPorts: [{ports: [{port: "8000", endPort: 8100, protocol: TCP}]}]
`
	e = engineWith(t, Options{LocalCluster: "east", DefaultLocalCluster: true}, l7Checkout+"---\n"+plain)
	p := e.Endpoint(eastCheckout).L7(tcp8080(westFrontend))
	if p == nil || !p.AllowsAll() || p.Parser != ParserHTTP || len(p.HTTP) != 4 {
		t.Errorf("west with a covering plain rule: %v, want the three rules and the wildcard", p)
	}
	if p := e.Endpoint(eastCheckout).L7(tcp8080(northFront)); p.AllowsAll() {
		t.Errorf("north got the wildcard of a rule that does not select it: %v", p)
	}
}

// The L7 policy of an entry is computed incrementally as identities come
// and go: the same as computing from scratch, and the changes carry it.
func TestL7Incremental(t *testing.T) {
	o := Options{LocalCluster: "east", DefaultLocalCluster: true}
	c, err := Parse(o, "p", []byte(l7Checkout))
	if err != nil {
		t.Fatal(err)
	}
	inc := NewEngine("east")
	inc.SetPolicies(c)
	for id, ls := range meshIdentities() {
		inc.UpsertIdentity(id, ls)
	}
	full := engineWith(t, o, l7Checkout)
	if !reflect.DeepEqual(inc.endpoints, full.endpoints) {
		t.Fatalf("incremental %v\nfull %v", inc.endpoints, full.endpoints)
	}
	const west2 = 2<<16 + 9
	changes := inc.UpsertIdentity(west2, ident("west", "shop", map[string]string{"app": "frontend"}))
	if len(changes) != 1 || !changes[0].Add || len(changes[0].L7.HTTP) != 3 {
		t.Fatalf("new west frontend: %+v", changes)
	}
	// Relabelled out of west's rules: north-like labels keep only the cart rule.
	changes = inc.UpsertIdentity(west2, ident("north", "shop", map[string]string{"app": "frontend"}))
	if len(changes) != 2 || changes[0].Add || !changes[1].Add || !slices.Equal(httpRules(changes[1].L7), []string{"POST /v1/cart"}) {
		t.Fatalf("relabelled: %+v", changes)
	}
	inc.RemoveIdentity(west2)
	if !reflect.DeepEqual(inc.endpoints, full.endpoints) {
		t.Error("after add and remove, the policy differs from the full computation")
	}
	// Replacing the policies with a plain one drops the L7 policy: an Add
	// of the same key without it.
	plain, _ := Parse(o, "p", []byte(checkoutPolicy))
	var sawDowngrade bool
	for _, ch := range inc.SetPolicies(plain) {
		if ch.Add && ch.Key == tcp8080(westFrontend) && ch.L7 == nil {
			sawDowngrade = true
		}
	}
	if !sawDowngrade || inc.Endpoint(eastCheckout).L7(tcp8080(westFrontend)) != nil {
		t.Error("west's entry kept its L7 policy after the L7 policies went")
	}
}

const dnsAndFQDN = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-egress, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.example.com"}, {matchName: api.partner.io}]
  - toFQDNs: [{matchPattern: "*.example.com"}, {matchName: API.partner.io.}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`

// toFQDNs select the identities the agent labels with their patterns; DNS
// rules on port 53 ANY become UDP and TCP entries with the DNS parser.
func TestFQDNAndDNSRules(t *testing.T) {
	o := Options{LocalCluster: "east", DefaultLocalCluster: true}
	c, err := Parse(o, "egress.yaml", []byte(dnsAndFQDN))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.FQDNPatterns(), []string{"*.example.com.", "api.partner.io."}; !slices.Equal(got, want) {
		t.Fatalf("patterns %q, want %q", got, want)
	}
	e := NewEngine("east")
	e.SetPolicies(c)
	const dnsID = 1<<16 + 50
	e.UpsertIdentity(dnsID, ident("east", "kube-system", map[string]string{"k8s-app": "kube-dns"}))
	e.UpsertIdentity(eastFrontend, ident("east", "shop", map[string]string{"app": "frontend"}))
	ep := e.Endpoint(eastFrontend)
	for _, proto := range []uint8{UDP, TCP} {
		k := Key{Peer: dnsID, Direction: Egress, PortRange: PortRange{Protocol: proto, From: 53, To: 53}}
		if p := ep.L7(k); p == nil || p.Parser != ParserDNS || len(p.DNS) != 2 {
			t.Errorf("dns %d: %v", proto, p)
		}
	}
	// An address answered for www.example.com: its node-local identity
	// carries the pattern; it is allowed on 443 only.
	const local1 = 1<<24 + 1
	addr := netip.MustParsePrefix("93.184.215.14/32")
	changes := e.UpsertIdentity(local1, FQDNLabels(addr, []string{"*.example.com."}))
	https := Key{Peer: local1, Direction: Egress, PortRange: PortRange{Protocol: TCP, From: 443, To: 443}}
	if len(changes) != 1 || changes[0] != (Change{Endpoint: eastFrontend, Key: https, Add: true}) {
		t.Fatalf("fqdn address: changes %+v", changes)
	}
	if !ep.Allows(local1, Egress, TCP, 443) || ep.Allows(local1, Egress, TCP, 80) {
		t.Error("fqdn address: want 443 allowed, 80 not")
	}
	// An address of a name no rule selects gets no entry.
	if ch := e.UpsertIdentity(local1+1, FQDNLabels(netip.MustParsePrefix("10.9.9.9/32"), []string{"evil.example.org."})); len(ch) != 0 {
		t.Errorf("unselected name: %+v", ch)
	}
	if ch := e.RemoveIdentity(local1); len(ch) != 1 || ch[0].Add {
		t.Errorf("expired address: %+v", ch)
	}
}

func TestPackKeepsLocalIdentities(t *testing.T) {
	for _, k := range []Key{
		{Peer: 1<<24 + 77, Direction: Egress, PortRange: PortRange{Protocol: SCTP, From: 1, To: 65535}},
		{Peer: 511<<15 + 32767, Direction: Ingress, PortRange: PortRange{Protocol: UDP, From: 53, To: 53}},
		{Peer: MaxPeerIdentity, Direction: Ingress},
	} {
		if got := unpack(k.Direction, pack(k)); got != k {
			t.Errorf("unpack(pack(%+v)) = %+v", k, got)
		}
	}
}

func TestInvalidL7NamesFileAndField(t *testing.T) {
	httpOn := func(ports, rules string) string {
		return `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: shop}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: ` + ports + `, rules: ` + rules + `}]
`
	}
	for _, tc := range []struct{ doc, want string }{
		{httpOn(`[{port: "80", protocol: TCP}]`, `{http: [{path: "/v1/(cart"}]}`), "spec.ingress[0].toPorts[0].rules.http[0].path"},
		{httpOn(`[{port: "80", protocol: TCP}]`, `{http: [{method: "[GET"}]}`), "rules.http[0].method"},
		{httpOn(`[{port: "80", protocol: UDP}]`, `{http: [{}]}`), "toPorts[0].ports[0].protocol: invalid policy: http rules apply to TCP only"},
		{httpOn(`[{port: "80"}]`, `{http: [{}]}`), "TCP only"},
		{httpOn(`[{port: "0", protocol: TCP}]`, `{http: [{}]}`), "ports[0].port"},
		{httpOn(`[]`, `{http: [{}]}`), "L7 rules need ports"},
		{httpOn(`[{port: "53", protocol: UDP}]`, `{dns: [{matchName: a.com}]}`), "egress only"},
		{httpOn(`[{port: "80", protocol: TCP}]`, `{http: [{}], dns: [{matchName: a.com}]}`), "http and dns rules on one port"},
		{httpOn(`[{port: "80", protocol: TCP}]`, `{kafka: [{}]}`), `unknown field "kafka"`},
		{httpOn(`[{port: "80", protocol: TCP}]`, `{http: [{headerMatches: [{name: X, mismatch: ADD}]}]}`), "headerMatches[0].mismatch"},
		{httpOn(`[{port: "80", protocol: TCP}]`, `{http: [{headerMatches: [{value: x}]}]}`), "headerMatches[0].name"},
		{httpOn(`[{port: "80", protocol: TCP}]`, `{http: [{headers: [": x"]}]}`), "headers[0]"},
		{strings.Replace(dnsAndFQDN, `port: "53"`, `port: "5353"`, 1), "DNS rules apply to port 53 alone"},
		{strings.Replace(dnsAndFQDN, `protocol: ANY}]`, `protocol: SCTP}]`, 1), "DNS rules apply to UDP, TCP or ANY"},
		{strings.Replace(dnsAndFQDN, `matchName: api.partner.io}`, `matchName: "api partner"}`, 1), "rules.dns[1].matchName"},
		{strings.Replace(dnsAndFQDN, `{matchName: API.partner.io.}`, `{matchName: a.io, matchPattern: "*.io"}`, 1), "toFQDNs[1]: invalid policy: matchName and matchPattern both set"},
		{strings.Replace(dnsAndFQDN, `{matchName: API.partner.io.}`, `{matchPattern: "a/b"}`, 1), "toFQDNs[1].matchPattern"},
		{strings.Replace(dnsAndFQDN, `  - toFQDNs:`, "  - toEndpoints: [{}]\n    toFQDNs:", 1), "toEndpoints and toFQDNs in one rule"},
		{dnsAndFQDN + "---\n" + strings.NewReplacer("frontend-egress", "other", `dns: [{matchPattern: "*.example.com"}, {matchName: api.partner.io}]`, `http: [{}]`, `protocol: ANY`, `protocol: TCP`).Replace(dnsAndFQDN),
			"dns rules of shop.yaml (document 1) shop/frontend-egress and http rules of shop.yaml (document 2) shop/other"},
	} {
		_, err := Parse(Options{LocalCluster: "east"}, "shop.yaml", []byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), "shop.yaml") || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("want an error naming shop.yaml and %q, got %v", tc.want, err)
		}
	}
}

func TestFQDNPattern(t *testing.T) {
	for in, want := range map[[2]string]string{
		{"API.Example.com", ""}: "api.example.com.",
		{"", "*.example.com."}:  "*.example.com.",
		{"", "*"}:               "*",
		{"", "**."}:             "*",
	} {
		if got := FQDNPattern(in[0], in[1]); got != want {
			t.Errorf("FQDNPattern(%q, %q) = %q, want %q", in[0], in[1], got, want)
		}
	}
	ls := FQDNLabels(netip.MustParsePrefix("10.0.0.1/32"), []string{"b.", "a."})
	if want := (wire.Labels{{Source: "cidr", Key: "10.0.0.1/32"}, {Source: "fqdn", Key: "a."}, {Source: "fqdn", Key: "b."}}); ls.String() != want.String() {
		t.Errorf("labels %v, want %v", ls, want)
	}
}

// BenchmarkUpsertIdentityL7: a new remote identity reaching an endpoint
// whose port has L7 rules of two policies (the merge of its L7 policy).
func BenchmarkUpsertIdentityL7(b *testing.B) {
	c, err := Parse(Options{LocalCluster: "east", DefaultLocalCluster: true}, "b.yaml", []byte(l7Checkout))
	if err != nil {
		b.Fatal(err)
	}
	e := NewEngine("east")
	e.SetPolicies(c)
	for id, ls := range meshIdentities() {
		e.UpsertIdentity(id, ls)
	}
	ls := ident("west", "shop", map[string]string{"app": "frontend"})
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		id := 2<<16 + 100 + uint32(i%1000)
		if ch := e.UpsertIdentity(id, ls); len(ch) == 0 || ch[len(ch)-1].L7 == nil {
			b.Fatal("no L7 entry")
		}
		e.RemoveIdentity(id)
	}
}

// Sets merged from several sources (the directory and the Kubernetes
// objects, each checked alone) may still put HTTP and DNS rules on one
// entry: the first rule's parser is kept and the conflict counted.
func TestL7ConflictAcrossSources(t *testing.T) {
	o := Options{LocalCluster: "east", DefaultLocalCluster: true}
	dns, err := Parse(o, "dns.yaml", []byte(dnsAndFQDN))
	if err != nil {
		t.Fatal(err)
	}
	http, err := Parse(o, "http.yaml", []byte(strings.NewReplacer("frontend-egress", "other",
		`dns: [{matchPattern: "*.example.com"}, {matchName: api.partner.io}]`, `http: [{}]`, `protocol: ANY`, `protocol: TCP`).Replace(dnsAndFQDN)))
	if err != nil {
		t.Fatal(err)
	}
	all := &Compiled{}
	all.Merge(dns)
	all.Merge(http)
	if err := CheckL7Conflicts(all); !errors.Is(err, ErrInvalidPolicy) {
		t.Fatalf("CheckL7Conflicts: %v", err)
	}
	e := NewEngine("east")
	e.SetPolicies(all)
	const dnsID = 1<<16 + 50
	e.UpsertIdentity(dnsID, ident("east", "kube-system", map[string]string{"k8s-app": "kube-dns"}))
	e.UpsertIdentity(eastFrontend, ident("east", "shop", map[string]string{"app": "frontend"}))
	k := Key{Peer: dnsID, Direction: Egress, PortRange: PortRange{Protocol: TCP, From: 53, To: 53}}
	if p := e.Endpoint(eastFrontend).L7(k); p == nil || p.Parser != ParserDNS || e.L7Conflicts() == 0 {
		t.Errorf("conflicting entry: %v, %d conflicts; want the first (dns) parser, counted", p, e.L7Conflicts())
	}
}
