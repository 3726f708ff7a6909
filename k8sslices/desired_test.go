package k8sslices

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/merge"
)

// Slices split by family, port set and size; names are valid, stable and
// distinct per service, cluster and slice.
func TestDesiredSlices(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: strings.Repeat("a", 63), UID: "u1"}}
	rb := merge.RemoteBackends{Cluster: "west", Ports: map[string][]datapath.Backend{}}
	for i := range 250 {
		a := netip.MustParseAddr(fmt.Sprintf("10.2.%d.%d", i/200, 1+i%200))
		rb.Ports["http"] = append(rb.Ports["http"], datapath.Backend{Addr: a, Port: 8080, Protocol: datapath.TCP})
		rb.Ports["grpc"] = append(rb.Ports["grpc"], datapath.Backend{Addr: a, Port: 9090, Protocol: datapath.TCP})
	}
	v6 := netip.MustParseAddr("fd00::1")
	rb.Ports["http"] = append(rb.Ports["http"], datapath.Backend{Addr: v6, Port: 8080, Protocol: datapath.TCP})
	north := merge.RemoteBackends{Cluster: "north", Ports: map[string][]datapath.Backend{
		"dns": {{Addr: netip.MustParseAddr("10.3.0.1"), Port: 53, Protocol: datapath.UDP}}}}

	got := desiredSlices(svc, []merge.RemoteBackends{rb, north}, DefaultMaxEndpointsPerSlice, nil)
	count := map[string]int{}
	for name, s := range got {
		if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
			t.Errorf("slice name %q: %v", name, errs)
		}
		if len(s.Endpoints) > DefaultMaxEndpointsPerSlice {
			t.Errorf("slice %s: %d endpoints", name, len(s.Endpoints))
		}
		c := s.Labels[LabelSourceCluster]
		count[c+"/"+string(s.AddressType)] += len(s.Endpoints)
	}
	// west: 250 IPv4 (http+grpc) in 3 slices, 1 IPv6 (http only); north: 1.
	want := map[string]int{"west/IPv4": 250, "west/IPv6": 1, "north/IPv4": 1}
	if fmt.Sprint(count) != fmt.Sprint(want) || len(got) != 5 {
		t.Errorf("endpoints by cluster and family %v in %d slices, want %v in 5", count, len(got), want)
	}
	for _, s := range got {
		if s.AddressType == discoveryv1.AddressTypeIPv4 && s.Labels[LabelSourceCluster] == "west" && len(s.Ports) != 2 {
			t.Errorf("slice %s ports %v", s.Name, s.Ports)
		}
	}
	again := desiredSlices(svc, []merge.RemoteBackends{north, rb}, DefaultMaxEndpointsPerSlice, nil)
	for name := range got {
		if _, ok := again[name]; !ok {
			t.Errorf("slice %s not computed again with the same name", name)
		}
	}
}

func TestWanted(t *testing.T) {
	for _, c := range []struct {
		ann  map[string]string
		all  bool
		want bool
	}{
		{map[string]string{AnnotationGlobal: "true", AnnotationSyncEndpointSlices: "true"}, false, true},
		{map[string]string{AnnotationGlobal: "true"}, false, false},
		{map[string]string{AnnotationGlobal: "true"}, true, true},
		{map[string]string{AnnotationGlobal: "true", AnnotationSyncEndpointSlices: "false"}, true, false},
		{map[string]string{AnnotationSyncEndpointSlices: "true"}, true, false},
	} {
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Annotations: c.ann}}
		if got := wanted(svc, c.all); got != c.want {
			t.Errorf("wanted(%v, all=%v) = %v", c.ann, c.all, got)
		}
	}
}

func TestDesiredSlicesMCSLabels(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "derived-0123456789",
		Labels: map[string]string{LabelMCSServiceName: "checkout"}}}
	rb := merge.RemoteBackends{Cluster: "west", Ports: map[string][]datapath.Backend{
		"http": {{Addr: netip.MustParseAddr("10.2.1.10"), Port: 8080, Protocol: datapath.TCP}}}}
	got := desiredSlices(svc, []merge.RemoteBackends{rb}, DefaultMaxEndpointsPerSlice, nil)
	if len(got) != 1 {
		t.Fatalf("slices %v", got)
	}
	for _, s := range got {
		if s.Labels[LabelMCSServiceName] != "checkout" || s.Labels[LabelMCSSourceCluster] != "west" || s.Labels["kubernetes.io/service-name"] != "derived-0123456789" {
			t.Fatalf("labels %v", s.Labels)
		}
	}
}

// A remote's topology goes into its endpoints where the API server accepts
// it; a value it would refuse is left out, reported, and the rest written.
func TestDesiredSlicesTopology(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", UID: "u1"}}
	a, b, c := netip.MustParseAddr("10.2.0.1"), netip.MustParseAddr("10.2.0.2"), netip.MustParseAddr("10.2.0.3")
	rb := merge.RemoteBackends{Cluster: "west", Ports: map[string][]datapath.Backend{}, Topology: map[netip.Addr]merge.BackendTopology{
		a: {Hostname: "web-0", Zone: "eu-1a", ForZones: []string{"eu-1a", "eu-1b"}},
		b: {Hostname: "Web_1", Zone: "eu 1b", ForZones: []string{"eu-1b", "eu-1b", "", "x y"}},
	}}
	for _, addr := range []netip.Addr{a, b, c} {
		rb.Ports["http"] = append(rb.Ports["http"], datapath.Backend{Addr: addr, Port: 8080, Protocol: datapath.TCP})
	}
	var drops []string
	got := desiredSlices(svc, []merge.RemoteBackends{rb}, DefaultMaxEndpointsPerSlice, func(d topologyDrop) { drops = append(drops, d.field+" "+d.value) })
	if len(got) != 1 {
		t.Fatalf("%d slices", len(got))
	}
	var eps []discoveryv1.Endpoint
	for _, s := range got {
		eps = s.Endpoints
	}
	str := func(p *string) string {
		if p == nil {
			return "<nil>"
		}
		return *p
	}
	hints := func(e discoveryv1.Endpoint) string {
		if e.Hints == nil {
			return "<nil>"
		}
		return fmt.Sprint(e.Hints.ForZones)
	}
	for i, want := range []string{"web-0 eu-1a [{eu-1a} {eu-1b}]", "<nil> <nil> [{eu-1b}]", "<nil> <nil> <nil>"} {
		e := eps[i]
		if got := str(e.Hostname) + " " + str(e.Zone) + " " + hints(e); got != want || e.NodeName != nil {
			t.Errorf("endpoint %v: %s, nodeName %v; want %s", e.Addresses, got, e.NodeName, want)
		}
	}
	if want := `[hostname Web_1 zone eu 1b hint zone eu-1b hint zone  hint zone x y]`; fmt.Sprint(drops) != want {
		t.Errorf("drops %v, want %s", drops, want)
	}
	rb.Topology[a] = merge.BackendTopology{ForZones: strings.Split("a b c d e f g h i", " ")}
	drops = nil
	for _, s := range desiredSlices(svc, []merge.RemoteBackends{rb}, DefaultMaxEndpointsPerSlice, func(d topologyDrop) { drops = append(drops, d.field) }) {
		if s.Endpoints[0].Hints != nil || len(drops) == 0 || drops[0] != "hint zone" {
			t.Errorf("9 hint zones: %v, drops %v", s.Endpoints[0].Hints, drops)
		}
	}
}
