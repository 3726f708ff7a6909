package policy

import (
	"errors"
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
			e.RemoveIdentity(2<<16 + 2)
		}
	})
}
