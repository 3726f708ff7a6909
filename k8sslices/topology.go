package k8sslices

import (
	"fmt"
	"net/netip"
	"slices"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/clustermesh/clustermesh/merge"
)

// maxZoneHints is the API server's limit of hints.forZones per endpoint.
const maxZoneHints = 8

// topologyDrop is a remote's topology value the writer leaves out of an
// endpoint because the API server would refuse the whole slice for it.
type topologyDrop struct {
	cluster, addr, field, value, reason string
}

func (d topologyDrop) String() string {
	return fmt.Sprintf("cluster %s backend %s: %s %q left out (%s)", d.cluster, d.addr, d.field, d.value, d.reason)
}

// withTopology sets what a remote publishes of backend addr besides its
// ports (Cilium's ClusterService zones and hostnames, our
// clustermesh.io/terminating): zone, hostname, hints.forZones and, for a
// terminating backend, the conditions ready=false, serving=true,
// terminating=true. Cilium's ClusterService has no node name, so nodeName is
// never set. A value the API server would refuse (a hostname that is not a
// DNS label, more than 8 or duplicate or invalid hint zones, a zone that is
// not a label value) is left out and reported to drop, the rest written.
func withTopology(e *discoveryv1.Endpoint, cluster, addr string, top map[netip.Addr]merge.BackendTopology, drop func(topologyDrop)) {
	if len(top) == 0 {
		return // the remote publishes none (an older apiserver)
	}
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return
	}
	t, ok := top[a]
	if !ok {
		return
	}
	if t.Terminating {
		f, tr := false, true
		e.Conditions = discoveryv1.EndpointConditions{Ready: &f, Serving: &tr, Terminating: &tr}
	}
	bad := func(field, value, reason string) { drop(topologyDrop{cluster, addr, field, value, reason}) }
	if t.Hostname != "" {
		if errs := validation.IsDNS1123Label(t.Hostname); len(errs) > 0 {
			bad("hostname", t.Hostname, errs[0])
		} else {
			e.Hostname = &t.Hostname
		}
	}
	if t.Zone != "" {
		if errs := validation.IsValidLabelValue(t.Zone); len(errs) > 0 {
			bad("zone", t.Zone, errs[0])
		} else {
			e.Zone = &t.Zone
		}
	}
	if hints := zoneHints(t.ForZones, func(v, reason string) { bad("hint zone", v, reason) }); len(hints) > 0 {
		e.Hints = &discoveryv1.EndpointHints{ForZones: hints}
	}
}

// zoneHints is forZones as the API server accepts them: label values, each
// once, at most maxZoneHints (all dropped beyond: a partial hint set would
// steer traffic wrongly).
func zoneHints(forZones []string, bad func(value, reason string)) []discoveryv1.ForZone {
	if len(forZones) > maxZoneHints {
		bad(fmt.Sprint(forZones), fmt.Sprintf("%d zones, at most %d", len(forZones), maxZoneHints))
		return nil
	}
	var out []discoveryv1.ForZone
	var seen []string
	for _, z := range forZones {
		switch {
		case z == "":
			bad(z, "empty")
		case len(validation.IsValidLabelValue(z)) > 0:
			bad(z, validation.IsValidLabelValue(z)[0])
		case slices.Contains(seen, z):
			bad(z, "duplicate")
		default:
			seen = append(seen, z)
			out = append(out, discoveryv1.ForZone{Name: z})
		}
	}
	return out
}
