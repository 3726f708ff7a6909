package localmesh

import (
	"fmt"
	"net/netip"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// CheckoutIP is the ClusterIP of the sample global service shop/checkout.
var CheckoutIP = netip.MustParseAddr("10.96.0.10")

// SampleState is the state of cluster number id (1-based) in the demo: two
// nodes, three checkout pods and a frontend pod, and the global service
// shop/checkout (affinity local, port 80 → 8080). Addresses are derived from
// id so that no two clusters overlap: nodes 192.168.<id>.<n>, pods
// 10.<id>.<n>.0/24.
func SampleState(id int) *statesource.State {
	st := &statesource.State{}
	for n := 1; n <= 2; n++ {
		st.Nodes = append(st.Nodes, statesource.Node{
			Name:     fmt.Sprintf("node-%d", n),
			IPs:      []netip.Addr{netip.AddrFrom4([4]byte{192, 168, byte(id), byte(n)})},
			PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(id), byte(n), 0}), 24)},
		})
	}
	for i := 1; i <= 3; i++ {
		st.Endpoints = append(st.Endpoints, &statesource.Endpoint{
			Namespace: "shop", Pod: fmt.Sprintf("checkout-%d", i), Node: fmt.Sprintf("node-%d", 1+i%2),
			IP:     netip.AddrFrom4([4]byte{10, byte(id), byte(1 + i%2), byte(10 + i)}),
			Labels: map[string]string{"app": "checkout"},
		})
	}
	st.Endpoints = append(st.Endpoints, &statesource.Endpoint{
		Namespace: "shop", Pod: "frontend-1", Node: "node-1",
		IP: netip.AddrFrom4([4]byte{10, byte(id), 1, 100}), Labels: map[string]string{"app": "frontend"},
	})
	st.Services = append(st.Services, statesource.Service{
		Namespace: "shop", Name: "checkout", ClusterIP: CheckoutIP,
		Ports:    []statesource.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"}},
		Selector: map[string]string{"app": "checkout"},
		Annotations: map[string]string{
			wire.AnnotationGlobal: "true", wire.AnnotationAffinity: wire.AffinityLocal,
		},
	})
	return st
}

// SetReady sets the readiness of every endpoint of st labelled app=value.
func SetReady(st *statesource.State, app string, ready bool) {
	for i := range st.Endpoints {
		if st.Endpoints[i].Labels["app"] == app {
			r := ready
			st.Endpoints[i].Ready = &r
		}
	}
}
