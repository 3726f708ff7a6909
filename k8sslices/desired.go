package k8sslices

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/merge"
)

// Labels and annotations of the slices the writer owns and of the services
// it reads.
const (
	// ManagedBy is the value of discoveryv1.LabelManagedBy on every slice
	// the writer owns; it never touches a slice without it. Readers of local
	// backends leave these slices out: k8ssource (named target ports, by
	// this literal value) and kubemesh (disconnect's stranded services).
	ManagedBy = "slices.clustermesh.io"
	// LabelSourceCluster names the remote cluster a slice's endpoints run in.
	LabelSourceCluster = "clustermesh.io/source-cluster"
	// AnnotationSyncEndpointSlices on a global service asks for its remote
	// backends as EndpointSlices ("true"), or refuses them ("false", even
	// with Config.AllGlobal). Cilium's annotation.
	AnnotationSyncEndpointSlices = "service.cilium.io/global-sync-endpoint-slices"
	// LabelMCSServiceName on a Service (a derived Service of an MCS
	// ServiceImport, package k8smcs) names the imported service; the
	// writer's slices of it carry it too, and LabelMCSSourceCluster.
	LabelMCSServiceName   = "multicluster.kubernetes.io/service-name"
	LabelMCSSourceCluster = "multicluster.kubernetes.io/source-cluster"
	// AnnotationGlobal marks a global service (wire.AnnotationGlobal).
	AnnotationGlobal = "service.cilium.io/global"
)

// DefaultMaxEndpointsPerSlice is kube-controller-manager's default
// --max-endpoints-per-slice.
const DefaultMaxEndpointsPerSlice = 100

// wanted reports whether the writer keeps slices for svc: a global service
// (not ExternalName) whose annotation asks for them, or any global service
// with all unless its annotation says "false".
func wanted(svc *corev1.Service, all bool) bool {
	if svc.Spec.Type == corev1.ServiceTypeExternalName || svc.Annotations[AnnotationGlobal] != "true" {
		return false
	}
	switch svc.Annotations[AnnotationSyncEndpointSlices] {
	case "true":
		return true
	case "false":
		return false
	}
	return all
}

// portSet is one address's ports, sorted by name: addresses with the same
// set share slices (a slice's ports apply to each of its endpoints).
type portSet []discoveryv1.EndpointPort

func (ps portSet) key() string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "%s/%s/%d;", *p.Name, *p.Protocol, *p.Port)
	}
	return b.String()
}

// group is the addresses of one remote cluster that share an address family
// and a port set.
type group struct {
	family discoveryv1.AddressType
	ports  portSet
	addrs  []string
}

// groups sorts a remote's backends into groups, each address once.
func groups(rb merge.RemoteBackends) []*group {
	byAddr := map[string]portSet{}
	fam := map[string]discoveryv1.AddressType{}
	for name, bes := range rb.Ports {
		for _, b := range bes {
			a := b.Addr.String()
			byAddr[a] = append(byAddr[a], endpointPort(name, b))
			fam[a] = discoveryv1.AddressTypeIPv4
			if b.Addr.Is6() {
				fam[a] = discoveryv1.AddressTypeIPv6
			}
		}
	}
	byKey := map[string]*group{}
	for a, ps := range byAddr {
		slices.SortFunc(ps, func(x, y discoveryv1.EndpointPort) int { return cmp.Compare(*x.Name, *y.Name) })
		k := string(fam[a]) + "|" + ps.key()
		g := byKey[k]
		if g == nil {
			g = &group{family: fam[a], ports: ps}
			byKey[k] = g
		}
		g.addrs = append(g.addrs, a)
	}
	out := make([]*group, 0, len(byKey))
	for _, g := range byKey {
		slices.Sort(g.addrs)
		out = append(out, g)
	}
	slices.SortFunc(out, func(x, y *group) int {
		return cmp.Or(cmp.Compare(x.family, y.family), cmp.Compare(x.ports.key(), y.ports.key()))
	})
	return out
}

func endpointPort(name string, b datapath.Backend) discoveryv1.EndpointPort {
	proto := corev1.Protocol(b.Protocol.String())
	port := int32(b.Port)
	return discoveryv1.EndpointPort{Name: &name, Protocol: &proto, Port: &port}
}

// desiredSlices returns the slices svc should have for the remotes' backends,
// by name. A slice holds at most max endpoints; its name is derived from the
// service, the cluster, the family, the port set and its index, so that two
// writers compute the same names and never create the same slice twice.
// Each endpoint carries the topology its remote publishes (withTopology);
// values the API server would refuse are left out and reported to drop.
func desiredSlices(svc *corev1.Service, remotes []merge.RemoteBackends, max int, drop func(topologyDrop)) map[string]*discoveryv1.EndpointSlice {
	if drop == nil {
		drop = func(topologyDrop) {}
	}
	out := map[string]*discoveryv1.EndpointSlice{}
	for _, rb := range remotes {
		for _, g := range groups(rb) {
			for i := 0; i*max < len(g.addrs); i++ {
				chunk := g.addrs[i*max : min((i+1)*max, len(g.addrs))]
				s := newSlice(svc, rb.Cluster, g, chunk, i)
				for j := range s.Endpoints {
					withTopology(&s.Endpoints[j], rb.Cluster, chunk[j], rb.Topology, drop)
				}
				out[s.Name] = s
			}
		}
	}
	return out
}

func newSlice(svc *corev1.Service, cluster string, g *group, addrs []string, index int) *discoveryv1.EndpointSlice {
	h := sha256.Sum256([]byte(svc.Name + "|" + cluster + "|" + string(g.family) + "|" + g.ports.key() + "|" + strconv.Itoa(index)))
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      sliceName(svc.Name, cluster, hex.EncodeToString(h[:])[:8]),
			Namespace: svc.Namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svc.Name,
				discoveryv1.LabelManagedBy:   ManagedBy,
				LabelSourceCluster:           cluster,
			},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Service", Name: svc.Name, UID: svc.UID,
			}},
		},
		AddressType: g.family,
		Ports:       slices.Clone(g.ports),
	}
	if name := svc.Labels[LabelMCSServiceName]; name != "" {
		// A derived Service of an MCS ServiceImport (k8smcs): its slices
		// name the imported service, as CoreDNS's multicluster plugin
		// looks them up.
		s.Labels[LabelMCSServiceName] = name
		s.Labels[LabelMCSSourceCluster] = cluster
	}
	// Every endpoint is ready and serving: a remote publishes only the
	// backends that are ready or serving. One the remote names terminating
	// (still serving, no longer ready) is marked so by withTopology.
	t, f := true, false
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{a},
			Conditions: discoveryv1.EndpointConditions{Ready: &t, Serving: &t, Terminating: &f},
		})
	}
	return s
}

// sliceName is <service>-<cluster>-<hash>, the service's part shortened so
// that the name stays a valid DNS label (63 characters).
func sliceName(svc, cluster, hash string) string {
	rest := "-" + cluster + "-" + hash
	if len(svc)+len(rest) > 63 {
		svc = strings.TrimRight(svc[:max(0, 63-len(rest))], "-.")
	}
	return svc + rest
}
