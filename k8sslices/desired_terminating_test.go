package k8sslices

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/merge"
)

// A backend its remote names terminating is written ready=false,
// serving=true, terminating=true; every other one ready, serving, not
// terminating, with or without other topology, and with none published.
func TestDesiredSlicesTerminating(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", UID: "u1"}}
	rb := merge.RemoteBackends{Cluster: "west", Ports: map[string][]datapath.Backend{}}
	for _, a := range []string{"10.2.1.5", "10.2.1.6", "10.2.1.7"} {
		rb.Ports["http"] = append(rb.Ports["http"], datapath.Backend{Addr: netip.MustParseAddr(a), Port: 8080, Protocol: datapath.TCP})
	}
	rb.Topology = map[netip.Addr]merge.BackendTopology{
		netip.MustParseAddr("10.2.1.5"): {Zone: "eu-1a"},
		netip.MustParseAddr("10.2.1.6"): {Zone: "eu-1b", Terminating: true},
	}
	conditions := func(rb merge.RemoteBackends) map[string]string {
		out := map[string]string{}
		for _, s := range desiredSlices(svc, []merge.RemoteBackends{rb}, DefaultMaxEndpointsPerSlice, nil) {
			for _, e := range s.Endpoints {
				out[e.Addresses[0]] = describeConditions(e.Conditions)
			}
		}
		return out
	}
	ready, terminating := "true/true/false", "false/true/true"
	want := map[string]string{"10.2.1.5": ready, "10.2.1.6": terminating, "10.2.1.7": ready}
	if got := conditions(rb); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("ready/serving/terminating %v, want %v", got, want)
	}
	rb.Topology = nil // an older apiserver: none terminating
	want["10.2.1.6"] = ready
	if got := conditions(rb); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("without topology: %v, want %v", got, want)
	}
}

func describeConditions(c discoveryv1.EndpointConditions) string {
	b := func(p *bool) string {
		if p == nil {
			return "<nil>"
		}
		return fmt.Sprint(*p)
	}
	return b(c.Ready) + "/" + b(c.Serving) + "/" + b(c.Terminating)
}
