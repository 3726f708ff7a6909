package merge

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

func backends(cluster uint16, n int) []datapath.Backend {
	out := make([]datapath.Backend, n)
	for i := range out {
		out[i] = datapath.Backend{Addr: netip.AddrFrom4([4]byte{10, byte(cluster), 0, byte(i + 1)}), Port: 8080,
			Protocol: datapath.TCP, ClusterID: cluster}
	}
	return out
}

// shares counts each cluster's slots.
func shares(sel []datapath.Backend) map[uint16]int {
	out := map[uint16]int{}
	for _, b := range sel {
		out[b.ClusterID]++
	}
	return out
}

func svcWith(ann map[string]string) *statesource.Service {
	a := map[string]string{wire.AnnotationGlobal: "true"}
	for k, v := range ann {
		a[k] = v
	}
	return &statesource.Service{Namespace: "shop", Name: "web", Annotations: a}
}

// With min-local-backends N, L healthy local backends take L/N of the
// traffic and the remote ones the rest, so that one recovering pod is not
// hit by all of it.
func TestMinLocalBackendsSpillsProportionally(t *testing.T) {
	pol := parsePolicy(svcWith(map[string]string{wire.AnnotationAffinity: "local", AnnotationMinLocalBackends: "4"}))
	remote := map[string][]datapath.Backend{"west": backends(2, 3), "north": backends(3, 2)}
	for local := 0; local <= 5; local++ {
		sel, from := pol.selectBackends("east", backends(1, local), remote)
		sh := shares(sel)
		switch {
		case local == 0:
			if sh[1] != 0 || from != "remote" {
				t.Errorf("0 local: %v from %s, want remote only", sh, from)
			}
		case local >= 4:
			if sh[1] != len(sel) || from != "local" {
				t.Errorf("%d local: %v from %s, want local only", local, sh, from)
			}
		default:
			got := float64(sh[1]) / float64(len(sel))
			if want := float64(local) / 4; got != want || from != "local+remote" {
				t.Errorf("%d local: local share %.3f (%v), want %.3f", local, got, sh, want)
			}
			// Within each side, every backend gets the same share.
			per := map[datapath.Backend]int{}
			for _, b := range sel {
				per[b]++
			}
			if per[backends(1, 1)[0]]*(4-local)*local != sh[1]/local*(4-local)*local {
				t.Errorf("uneven local backends: %v", per)
			}
		}
	}
}

func TestClusterWeights(t *testing.T) {
	pol := parsePolicy(svcWith(map[string]string{AnnotationClusterWeights: "east=2,west=1,north=0"}))
	remote := map[string][]datapath.Backend{"west": backends(2, 3), "north": backends(3, 2)}
	sel, from := pol.selectBackends("east", backends(1, 2), remote)
	sh := shares(sel)
	if from != "weighted" || sh[3] != 0 || 2*sh[2] != sh[1] {
		t.Errorf("weights east=2 west=1 north=0: shares %v from %s", sh, from)
	}
	// East without healthy backends: west takes all (north has weight 0).
	sel, _ = pol.selectBackends("east", nil, remote)
	if sh := shares(sel); sh[2] != len(sel) {
		t.Errorf("east down: %v, want west only", sh)
	}
	// Only north (weight 0) has backends: fall back to affinity, never to nothing.
	sel, _ = pol.selectBackends("east", nil, map[string][]datapath.Backend{"north": backends(3, 2)})
	if len(sel) != 2 {
		t.Errorf("no weighted cluster healthy: %d slots, want north's 2 as a fallback", len(sel))
	}
}

// Invalid annotation values leave the default in force, with a message.
func TestInvalidAnnotationsFallBack(t *testing.T) {
	for _, tc := range []struct {
		ann  map[string]string
		want string
	}{
		{map[string]string{wire.AnnotationAffinity: "nearby"}, "affinity"},
		{map[string]string{wire.AnnotationAffinity: "local", AnnotationMinLocalBackends: "-3"}, "min-local-backends"},
		{map[string]string{wire.AnnotationAffinity: "none", AnnotationMinLocalBackends: "2"}, "affinity local only"},
		{map[string]string{AnnotationClusterWeights: "east=two"}, "cluster-weights"},
		{map[string]string{AnnotationClusterWeights: "East=1"}, "cluster name"},
		{map[string]string{AnnotationClusterWeights: "east=1,east=2"}, "twice"},
		{map[string]string{AnnotationFailoverOnStaleCluster: "sometimes"}, "failover-on-stale-cluster"},
	} {
		pol := parsePolicy(svcWith(tc.ann))
		if len(pol.warnings) != 1 || !strings.Contains(pol.warnings[0], tc.want) {
			t.Errorf("%v: warnings %q, want one about %q", tc.ann, pol.warnings, tc.want)
		}
		sel, _ := pol.selectBackends("east", backends(1, 2), map[string][]datapath.Backend{"west": backends(2, 2)})
		if len(sel) == 0 {
			t.Errorf("%v: zero backends selected", tc.ann)
		}
	}
}

// failover-on-stale-cluster: a stale cluster's backends leave the selection
// of services that ask for it, and come back when it is fresh again.
func TestStaleClusterFailover(t *testing.T) {
	for _, failover := range []bool{true, false} {
		t.Run(fmt.Sprint("failover=", failover), func(t *testing.T) {
			m, dp := mgNewMerger(t)
			st := mgLocalState(wire.AffinityRemote, true)
			st.Services[0].Annotations[AnnotationFailoverOnStaleCluster] = fmt.Sprint(failover)
			m.SetLocal(st)
			m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
			m.SetRemoteService("cluster-b", mgWeb, mgRemote(mgClusterB, true, "10.3.0.1"))
			count := func() map[uint16]int {
				svcs, _ := dp.Services()
				return shares(svcs[mgFEHTTP])
			}
			m.SetStale("cluster-a", true)
			got := count()
			if failover && (got[uint16(mgClusterA.ID)] != 0 || got[uint16(mgClusterB.ID)] != 1) {
				t.Errorf("stale cluster-a still selected: %v", got)
			}
			if !failover && got[uint16(mgClusterA.ID)] != 1 {
				t.Errorf("without the annotation a stale cluster stays selected: %v", got)
			}
			m.SetStale("cluster-a", false)
			if got := count(); got[uint16(mgClusterA.ID)] != 1 || got[uint16(mgClusterB.ID)] != 1 {
				t.Errorf("fresh again: %v", got)
			}
			m.SetStale("cluster-a", true)
			m.SetStale("cluster-b", true)
			if got := count(); failover && len(got) != 1 {
				t.Errorf("every remote stale: %v, want the local backends (affinity remote falls back)", got)
			}
		})
	}
}

// Terminating pods that still serve are used only when no ready backend is
// left anywhere.
func TestServingTerminatingAsLastResort(t *testing.T) {
	m, dp := mgNewMerger(t)
	st := mgLocalState(wire.AffinityLocal, false) // web pods not ready...
	serving := true
	for i := range st.Endpoints {
		st.Endpoints[i].Serving = &serving // ...but still serving
	}
	m.SetLocal(st)
	count := func() map[uint16]int {
		svcs, _ := dp.Services()
		return shares(svcs[mgFEHTTP])
	}
	if got := count(); got[1] == 0 {
		t.Fatalf("no ready backend anywhere: the serving local ones must be used, got %v", got)
	}
	m.SetRemoteService("cluster-a", mgWeb, mgRemote(mgClusterA, true, "10.2.0.1"))
	if got := count(); got[1] != 0 || got[uint16(mgClusterA.ID)] != 1 {
		t.Errorf("a ready remote backend beats terminating local ones: %v", got)
	}
}
