package k8sslices_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/merge"
)

// describe is each endpoint of cluster's slices as "addr hostname zone
// hints ready/serving/terminating nodeName", sorted by address.
func describe(ss []discoveryv1.EndpointSlice, cluster string) string {
	str := func(p *string) string {
		if p == nil {
			return "-"
		}
		return *p
	}
	var out []string
	for _, s := range ss {
		if s.Labels["clustermesh.io/source-cluster"] != cluster {
			continue
		}
		for _, e := range s.Endpoints {
			h := "-"
			if e.Hints != nil {
				h = fmt.Sprint(e.Hints.ForZones)
			}
			c := e.Conditions
			out = append(out, fmt.Sprintf("%s %s %s %s %v/%v/%v %s", e.Addresses[0], str(e.Hostname), str(e.Zone), h,
				*c.Ready, *c.Serving, *c.Terminating, str(e.NodeName)))
		}
	}
	return fmt.Sprint(out)
}

// The zones, hint zones and hostnames a remote publishes are in its slices
// as the API server stores them, follow changes, and a remote publishing
// none (an older apiserver or agent) gets endpoints without them. Every
// endpoint is ready, serving, not terminating (Cilium's ClusterService has
// no per-backend condition), without a nodeName.
func TestK8sSlicesTopology(t *testing.T) {
	env := kubetest.Start(t, "east")
	client := env.Clusters[0].Client
	src := newSource()
	createService(t, client, "web", globalSync())
	src.set("default", "web", "west", 8080, "10.2.0.1", "10.2.0.2")
	src.setTopology("default", "web", "west", map[netip.Addr]merge.BackendTopology{
		netip.MustParseAddr("10.2.0.1"): {Hostname: "web-0", Zone: "eu-1a", ForZones: []string{"eu-1a"}},
		netip.MustParseAddr("10.2.0.2"): {Zone: "eu-1b", Hostname: "Not_A_Label"},
	})
	src.set("default", "web", "old", 8080, "10.3.0.1") // publishes no topology
	w, _ := run(t, client, src, "a", nil)

	want := "[10.2.0.1 web-0 eu-1a [{eu-1a}] true/true/false - 10.2.0.2 - eu-1b - true/true/false -]"
	testenv.WaitFor(t, wait, "west's slice with its zones and hostname", func() bool {
		return describe(owned(t, client, "web"), "west") == want
	})
	if got, want := describe(owned(t, client, "web"), "old"), "[10.3.0.1 - - - true/true/false -]"; got != want {
		t.Errorf("old's slice: %s, want %s", got, want)
	}
	// 10.2.0.2's hostname, refused by the API server, was left out and
	// counted.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(w.Collectors()...)
	if n, err := testutil.GatherAndCount(reg, "clustermesh_slices_topology_dropped_total"); err != nil || n != 1 {
		t.Errorf("topology_dropped_total: %d series, %v", n, err)
	}
	if mfs, err := reg.Gather(); err == nil {
		for _, mf := range mfs {
			if mf.GetName() == "clustermesh_slices_topology_dropped_total" && mf.GetMetric()[0].GetCounter().GetValue() < 1 {
				t.Errorf("topology_dropped_total %v, want at least 1", mf.GetMetric()[0].GetCounter().GetValue())
			}
		}
	}

	// West moves 10.2.0.2 to another zone and stops publishing 10.2.0.1's.
	src.setTopology("default", "web", "west", map[netip.Addr]merge.BackendTopology{
		netip.MustParseAddr("10.2.0.2"): {Zone: "eu-1c", ForZones: []string{"eu-1c", "eu-1a"}},
	})
	want = "[10.2.0.1 - - - true/true/false - 10.2.0.2 - eu-1c [{eu-1c} {eu-1a}] true/true/false -]"
	testenv.WaitFor(t, wait, "west's slice following its topology", func() bool {
		return describe(owned(t, client, "web"), "west") == want
	})
	if st := w.Status(); st.WriteErrors != 0 || st.Conflicts != 0 {
		t.Errorf("status %+v", st)
	}
}
