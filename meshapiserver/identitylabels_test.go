package meshapiserver

import (
	"context"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/wire"
)

// TestStartsWithNumbersOfOldLabelSets: identities now carry the labels
// Cilium adds (namespace labels, service account), so a pod's label set
// differs from the one an earlier version stored a number for. The start
// keeps the stored numbers (never reused), and the new label set gets a new
// number.
func TestStartsWithNumbersOfOldLabelSets(t *testing.T) {
	f := newFixture(t)
	east := wire.Cluster{Name: "east", ID: 1, MaxConnectedClusters: 255}
	first, _ := wire.IdentityRange(east.ID, east.MaxConnectedClusters)
	old := "k8s:app=checkout;k8s:io.cilium.k8s.policy.cluster=east;k8s:io.kubernetes.pod.namespace=shop;"
	if err := (IdentityFile{Path: f.idsFile}).Save(context.Background(), east, map[string]uint32{old: first}); err != nil {
		t.Fatal(err)
	}
	f.start(t, "127.0.0.1:0")
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	ids := identityKeys(t, admin)
	if len(ids) != 2 {
		t.Fatalf("identities %v, want checkout and cart", ids)
	}
	for k, v := range ids {
		if k == wire.IdentityKey(first) {
			t.Errorf("the number of the old label set was reused for %s", v)
		}
		if strings.Contains(v, "app=checkout") && !strings.Contains(v, "io.cilium.k8s.policy.serviceaccount=checkout") {
			t.Errorf("checkout identity %s without its service account", v)
		}
	}
	saved, err := (IdentityFile{Path: f.idsFile}).Load(context.Background(), east)
	if err != nil || saved[old] != first || len(saved) != 3 {
		t.Errorf("stored identities %v (%v): want the old one kept and two new", saved, err)
	}
}
