package policy

import (
	"errors"
	"net/netip"
	"regexp"
	"testing"

	"github.com/clustermesh/clustermesh/wire"
)

// FuzzParse: any document is either compiled or refused with
// ErrInvalidPolicy (never a panic, never another error), and a compiled one
// evaluates against identities of every cluster.
func FuzzParse(f *testing.F) {
	f.Add([]byte(checkoutPolicy))
	f.Add([]byte("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: shop}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: a}}}]\n    ports: [{port: 80, endPort: 90}]\n"))
	f.Add([]byte("kind: CiliumNetworkPolicy\nspecs: [{endpointSelector: {}, egress: [{toPorts: [{ports: [{port: \"0\"}]}]}]}]\n---\n"))
	f.Add([]byte("{}"))
	f.Add([]byte(l7Checkout))
	f.Add([]byte(dnsAndFQDN))
	f.Add([]byte(`{"kind":"CiliumNetworkPolicy","spec":{"endpointSelector":{},"egress":[{"toFQDNs":[{"matchPattern":"**."}],` +
		`"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}],"rules":{"http":[{"headerMatches":[{"name":"a","mismatch":"LOG"}]}]}}]}]}}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		for _, o := range []Options{{LocalCluster: "east", DefaultLocalCluster: true, AllowFromHost: true}, {LocalCluster: "east"}} {
			c, err := Parse(o, "fuzz.yaml", doc)
			if err != nil {
				if !errors.Is(err, ErrInvalidPolicy) {
					t.Fatalf("error %v does not wrap ErrInvalidPolicy", err)
				}
				continue
			}
			e := NewEngine("east")
			for id, ls := range meshIdentities() {
				e.UpsertIdentity(id, ls)
			}
			e.UpsertIdentity(wire.IdentityHost, wire.HostLabels)
			e.SetPolicies(c)
			e.UpsertIdentity(1<<24+1, FQDNLabels(netip.MustParsePrefix("10.0.0.1/32"), c.FQDNPatterns()))
			e.RemoveIdentity(2<<16 + 2)
			checkL7(t, e)
		}
	})
}

// checkL7 asserts what the proxy relies on: every L7 policy is of an
// allowed entry, has one parser with rules of that parser, and its regular
// expressions compile.
func checkL7(t *testing.T, e *Engine) {
	for _, id := range e.Endpoints() {
		ep := e.Endpoint(id)
		for _, k := range ep.L7Keys() {
			p := ep.L7(k)
			switch {
			case !ep.has(k):
				t.Fatalf("endpoint %d: L7 policy of a key not allowed: %+v", id, k)
			case p.Parser == ParserHTTP && (len(p.HTTP) == 0 || len(p.DNS) != 0),
				p.Parser == ParserDNS && (len(p.DNS) == 0 || len(p.HTTP) != 0 || k.Direction != Egress || k.From != 53),
				p.Parser == ParserNone:
				t.Fatalf("endpoint %d key %+v: inconsistent L7 policy %v", id, k, p)
			}
			for _, r := range p.HTTP {
				for _, re := range []string{r.Path, r.Method, r.Host} {
					if _, err := regexp.Compile(re); err != nil {
						t.Fatalf("endpoint %d: %v", id, err)
					}
				}
			}
		}
	}
}
