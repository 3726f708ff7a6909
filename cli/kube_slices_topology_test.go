package cli

import (
	"context"
	"fmt"
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8sslices"
)

// West's backend's zone (its node's label), hint zones and hostname (its
// EndpointSlice's) travel through west's mesh apiserver (Cilium's
// ClusterService zones and hostnames) to east's slice of it. Terminating but
// still serving in west, it is in east's slice as ready=false, serving=true,
// terminating=true (west names it in clustermesh.io/terminating); once it
// stops serving it leaves east's slice.
// CLUSTERMESH_SLICES_YAML=FILE writes east's slice there (the docs' output).
func TestK8sSlicesTopologyEndToEnd(t *testing.T) {
	m := startSlicesMesh(t)
	ctx := context.Background()
	n, err := m.west.Client.CoreV1().Nodes().Get(ctx, "w1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	n.Labels[corev1.LabelTopologyZone] = "eu-west-1a"
	if _, err := m.west.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := m.west.Client.DiscoveryV1().EndpointSlices("shop").Get(ctx, m.westSlice.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f, tr := false, true
	e := &s.Endpoints[0]
	e.Hostname = ptrTo("checkout-w1")
	e.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "eu-west-1a"}, {Name: "eu-west-1b"}}}
	e.Conditions = discoveryv1.EndpointConditions{Ready: &f, Serving: &tr, Terminating: &tr}
	if _, err := m.west.Client.DiscoveryV1().EndpointSlices("shop").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	want := "10.2.1.10 checkout-w1 eu-west-1a [{eu-west-1a} {eu-west-1b}] false/true/true <nil>"
	var got *discoveryv1.EndpointSlice
	testenv.WaitFor(t, slicesBound, "west's backend's topology in east's slice", func() bool {
		l, err := m.east.Client.DiscoveryV1().EndpointSlices("shop").List(ctx, metav1.ListOptions{
			LabelSelector: discoveryv1.LabelManagedBy + "=" + k8sslices.ManagedBy + "," + k8sslices.LabelSourceCluster + "=west"})
		if err != nil || len(l.Items) != 1 || len(l.Items[0].Endpoints) != 1 {
			return false
		}
		got = &l.Items[0]
		return describeEndpoint(got.Endpoints[0]) == want
	})
	if file := os.Getenv("CLUSTERMESH_SLICES_YAML"); file != "" {
		got.ManagedFields = nil
		b, err := yaml.Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// It stops serving: it leaves west's service, then east's slice.
	s, err = m.west.Client.DiscoveryV1().EndpointSlices("shop").Get(ctx, m.westSlice.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Endpoints[0].Conditions = discoveryv1.EndpointConditions{Ready: &f, Serving: &f, Terminating: &tr}
	if _, err := m.west.Client.DiscoveryV1().EndpointSlices("shop").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, slicesBound, "west's backend that stopped serving gone from east's slices", func() bool {
		return len(remoteAddrs(t, m.east, "west")) == 0
	})
}

func ptrTo[T any](v T) *T { return &v }

// describeEndpoint is "address hostname zone hints ready/serving/terminating
// nodeName".
func describeEndpoint(e discoveryv1.Endpoint) string {
	str := func(p *string) string {
		if p == nil {
			return "<nil>"
		}
		return *p
	}
	h := "<nil>"
	if e.Hints != nil {
		h = fmt.Sprint(e.Hints.ForZones)
	}
	c := e.Conditions
	b := func(p *bool) string {
		if p == nil {
			return "<nil>"
		}
		return fmt.Sprint(*p)
	}
	return fmt.Sprintf("%s %s %s %s %s/%s/%s %s", e.Addresses[0], str(e.Hostname), str(e.Zone), h, b(c.Ready), b(c.Serving), b(c.Terminating), str(e.NodeName))
}
