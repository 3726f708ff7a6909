package scalerig

import (
	"fmt"
	"net/netip"

	"github.com/clustermesh/clustermesh/meshapiserver"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// Profile is the shape of one cluster's state.
type Profile struct {
	Nodes      int // default 20
	Endpoints  int // default 2,000; at most 65,536 × 4
	Identities int // distinct label sets among the endpoints; default 200
	// Services global services of BackendsPer endpoints each (the first
	// Services×BackendsPer endpoints back them); defaults 50 and 10.
	Services    int
	BackendsPer int
}

// Realistic is the cluster: 2,000 endpoints of 200 identities on
// 20 nodes, 50 global services of 10 backends.
var Realistic = Profile{Nodes: 20, Endpoints: 2000, Identities: 200, Services: 50, BackendsPer: 10}

func (p Profile) withDefaults() Profile {
	if p.Nodes <= 0 {
		p.Nodes = 20
	}
	if p.Endpoints <= 0 {
		p.Endpoints = 2000
	}
	if p.Identities <= 0 {
		p.Identities = 200
	}
	if p.Services <= 0 {
		p.Services = 50
	}
	if p.BackendsPer <= 0 {
		p.BackendsPer = 10
	}
	return p
}

// PodPrefix is the pod address range of cluster id (1..254): 10.id.0.0/16
// up to 65,536 endpoints; larger profiles take 100.64+4·(id%16).0.0/14.
func PodPrefix(id uint32, p Profile) netip.Prefix {
	if p.withDefaults().Endpoints <= 1<<16 {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(id), 0, 0}), 16)
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + 4*(id%16)), 0, 0}), 14)
}

// PodAddr is the address of endpoint i of cluster id.
func PodAddr(id uint32, p Profile, i int) netip.Addr {
	b := PodPrefix(id, p).Addr().As4()
	n := uint32(b[0])<<24 | uint32(b[1])<<16 + uint32(i+1)
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// State is cluster id's state of profile p. The first node owns the pod
// range, so that every entry is in force at the readers; endpoint i's app
// label is svc-<s> when it backs global service s, else app-<i mod
// Identities>; each endpoint is labelled clustermesh.io/sync: "true" when
// i is even (the opt-in export mode then exports half of them).
func State(id uint32, p Profile) *statesource.State {
	p = p.withDefaults()
	st := &statesource.State{}
	for n := 0; n < p.Nodes; n++ {
		st.Nodes = append(st.Nodes, statesource.Node{Name: fmt.Sprintf("node-%d", n),
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{192, 168, byte(id), byte(n + 1)})}})
	}
	st.Nodes[0].PodCIDRs = []netip.Prefix{PodPrefix(id, p)}
	for i := 0; i < p.Endpoints; i++ {
		labels := map[string]string{"app": fmt.Sprintf("app-%d", i%p.Identities)}
		if i < p.Services*p.BackendsPer {
			labels["app"] = fmt.Sprintf("svc-%d", i/p.BackendsPer)
		}
		if i%2 == 0 {
			labels[meshapiserver.SyncLabel] = "true"
		}
		st.Endpoints = append(st.Endpoints, &statesource.Endpoint{
			Namespace: "bulk", Pod: fmt.Sprintf("pod-%d", i), Node: fmt.Sprintf("node-%d", i%p.Nodes),
			IP: PodAddr(id, p, i), Labels: labels,
		})
	}
	for s := 0; s < p.Services; s++ {
		st.Services = append(st.Services, statesource.Service{Namespace: "bulk", Name: fmt.Sprintf("svc-%d", s),
			ClusterIP:   netip.AddrFrom4([4]byte{10, 255, byte(s >> 8), byte(s)}),
			Ports:       []statesource.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}},
			Selector:    map[string]string{"app": fmt.Sprintf("svc-%d", s)},
			Annotations: map[string]string{wire.AnnotationGlobal: "true"}})
	}
	return st
}
