package ciliumagent

import (
	"fmt"
	"maps"
	"slices"

	serviceStore "github.com/cilium/cilium/pkg/clustermesh/store"
	"github.com/cilium/cilium/pkg/identity"
	"github.com/cilium/cilium/pkg/identity/key"
	k8sutils "github.com/cilium/cilium/pkg/k8s/utils"
	"github.com/cilium/cilium/pkg/labels"
	"github.com/cilium/cilium/pkg/loadbalancer"
	"github.com/cilium/cilium/pkg/source"
)

// The published cluster, and the Cilium cluster that reads it.
const (
	clusterName = "east"
	clusterID   = 3
	localName   = "west"
	localID     = 7
)

// The state files our apiserver publishes, in its state-file format
// (docs/state-file.md).
const (
	stateHead = `
nodes:
- name: east-1
  ips: [192.168.1.1]
  podCIDRs: [10.1.1.0/24]
- name: east-2
  ips: [192.168.1.2, 192.168.2.2]
  podCIDRs: [10.1.2.0/24, fd00:1:2::/64]
namespaces:
- {name: shop, labels: {team: payments, env: prod}}
`
	stateServices = `
services:
- namespace: shop
  name: checkout
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
  selector: {app: checkout}
  labels: {tier: front}
  annotations: {service.cilium.io/global: "true"}
- namespace: shop
  name: cart
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}]
  selector: {app: cart}
`
	// stateBefore: two checkout pods, a cart pod whose own cluster label
	// Cilium must override, a pod of another namespace.
	stateBefore = stateHead + `
endpoints:
- {namespace: shop, pod: checkout-a, ip: 10.1.1.10, node: east-1, serviceAccount: checkout, labels: {app: checkout}}
- {namespace: shop, pod: checkout-b, ip: 10.1.2.10, node: east-2, serviceAccount: checkout, labels: {app: checkout}}
- {namespace: shop, pod: cart-a, ip: 10.1.1.20, node: east-1, labels: {app: cart, io.cilium.k8s.policy.cluster: west}}
- {namespace: default, pod: tools-a, ip: 10.1.2.30, node: east-2, labels: {app: tools}}
` + stateServices
	// stateAfter: checkout-c added, tools-a removed, checkout-a unready.
	stateAfter = stateHead + `
endpoints:
- {namespace: shop, pod: checkout-a, ip: 10.1.1.10, node: east-1, serviceAccount: checkout, labels: {app: checkout}, ready: false}
- {namespace: shop, pod: checkout-b, ip: 10.1.2.10, node: east-2, serviceAccount: checkout, labels: {app: checkout}}
- {namespace: shop, pod: checkout-c, ip: 10.1.2.11, node: east-2, serviceAccount: checkout, labels: {app: checkout}}
- {namespace: shop, pod: cart-a, ip: 10.1.1.20, node: east-1, labels: {app: cart, io.cilium.k8s.policy.cluster: west}}
` + stateServices
	// stateWhileDown: written while the apiserver is stopped: checkout-c
	// and cart-a gone, checkout-a ready again, the service no longer
	// global.
	stateWhileDown = stateHead + `
endpoints:
- {namespace: shop, pod: checkout-a, ip: 10.1.1.10, node: east-1, serviceAccount: checkout, labels: {app: checkout}}
- {namespace: shop, pod: checkout-b, ip: 10.1.2.10, node: east-2, serviceAccount: checkout, labels: {app: checkout}}
services:
- namespace: shop
  name: checkout
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
  selector: {app: checkout}
`
)

// What the state files say, in the terms a Cilium agent sees them.
type wantNode struct {
	ips         []string
	ipv4, ipv6  string
	hostForPods string
}

type wantEndpoint struct {
	namespace, pod, node string
	serviceAccount       string
	labels               map[string]string
}

type wantState struct {
	endpoints map[string]wantEndpoint // by IP
	backends  []string                // of the global shop/checkout; nil: not global
}

var (
	wantNodes = map[string]wantNode{
		"east-1": {ips: []string{"192.168.1.1"}, ipv4: "10.1.1.0/24", hostForPods: "192.168.1.1"},
		"east-2": {ips: []string{"192.168.1.2", "192.168.2.2"}, ipv4: "10.1.2.0/24", ipv6: "fd00:1:2::/64", hostForPods: "192.168.1.2"},
	}
	namespaceLabels = map[string]map[string]string{"shop": {"team": "payments", "env": "prod"}}

	checkoutA = wantEndpoint{"shop", "checkout-a", "east-1", "checkout", map[string]string{"app": "checkout"}}
	checkoutB = wantEndpoint{"shop", "checkout-b", "east-2", "checkout", map[string]string{"app": "checkout"}}
	checkoutC = wantEndpoint{"shop", "checkout-c", "east-2", "checkout", map[string]string{"app": "checkout"}}
	cartA     = wantEndpoint{"shop", "cart-a", "east-1", "", map[string]string{"app": "cart", "io.cilium.k8s.policy.cluster": "west"}}
	toolsA    = wantEndpoint{"default", "tools-a", "east-2", "", map[string]string{"app": "tools"}}

	wantBefore = wantState{
		endpoints: map[string]wantEndpoint{"10.1.1.10": checkoutA, "10.1.2.10": checkoutB, "10.1.1.20": cartA, "10.1.2.30": toolsA},
		backends:  []string{"10.1.1.10", "10.1.2.10"},
	}
	wantAfter = wantState{
		endpoints: map[string]wantEndpoint{"10.1.1.10": checkoutA, "10.1.2.10": checkoutB, "10.1.2.11": checkoutC, "10.1.1.20": cartA},
		backends:  []string{"10.1.2.10", "10.1.2.11"},
	}
	wantWhileDown = wantState{
		endpoints: map[string]wantEndpoint{"10.1.1.10": checkoutA, "10.1.2.10": checkoutB},
	}
	wantNothing = wantState{endpoints: map[string]wantEndpoint{}}
)

// check compares what the agent's parts were given with want; the first
// difference is the error.
func (v *view) check(want wantState) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	nodes := wantNodes
	if len(want.endpoints) == 0 {
		nodes = nil
	}
	if err := v.checkNodes(nodes); err != nil {
		return err
	}
	if err := v.checkEndpoints(want.endpoints); err != nil {
		return err
	}
	return v.checkServices(want.backends)
}

func (v *view) checkNodes(want map[string]wantNode) error {
	if got, w := slices.Sorted(maps.Keys(v.nodes)), slices.Sorted(maps.Keys(want)); !slices.Equal(got, w) {
		return fmt.Errorf("nodes %v, want %v", got, w)
	}
	for name, wn := range want {
		n := v.nodes[name]
		var addrs []string
		for _, a := range n.IPAddresses {
			if a.Type != "InternalIP" {
				return fmt.Errorf("node %s: address %s of type %s, want InternalIP", name, a.IP, a.Type)
			}
			addrs = append(addrs, a.IP.String())
		}
		switch {
		case !slices.Equal(addrs, wn.ips):
			return fmt.Errorf("node %s: addresses %v, want %v", name, addrs, wn.ips)
		case n.GetNodeIP(false).String() != wn.hostForPods:
			return fmt.Errorf("node %s: Cilium's node IP %s, want %s", name, n.GetNodeIP(false), wn.hostForPods)
		case cidrString(n.IPv4AllocCIDR.String()) != wn.ipv4:
			return fmt.Errorf("node %s: IPv4AllocCIDR %s, want %s", name, n.IPv4AllocCIDR, wn.ipv4)
		case cidrString(n.IPv6AllocCIDR.String()) != wn.ipv6:
			return fmt.Errorf("node %s: IPv6AllocCIDR %s, want %q", name, n.IPv6AllocCIDR, wn.ipv6)
		case n.Cluster != clusterName || n.ClusterID != clusterID:
			return fmt.Errorf("node %s: cluster %s/%d", name, n.Cluster, n.ClusterID)
		case n.Source != source.ClusterMesh:
			return fmt.Errorf("node %s: source %s, want %s", name, n.Source, source.ClusterMesh)
		}
	}
	return nil
}

// checkEndpoints: every endpoint's IP in the ipcache with its host, pod and
// identity, from the clustermesh source; every identity the agent was told
// of is one of those, with the labels Cilium gives the pod.
func (v *view) checkEndpoints(want map[string]wantEndpoint) error {
	// A host address is keyed without its /32 (IPIdentityPair.PrefixString).
	if got, w := slices.Sorted(maps.Keys(v.ips)), slices.Sorted(maps.Keys(want)); !slices.Equal(got, w) {
		return fmt.Errorf("ipcache %v, want %v", got, w)
	}
	minID, maxID := identity.GetMinimalAllocationIdentity(clusterID), identity.GetMaximumAllocationIdentity(clusterID)
	used := map[identity.NumericIdentity]bool{}
	for ip, we := range want {
		e := v.ips[ip]
		switch {
		case e.id < minID || e.id > maxID:
			return fmt.Errorf("ipcache %s: identity %d outside cluster %d's range %d..%d", ip, e.id, clusterID, minID, maxID)
		case e.hostIP.String() != wantNodes[we.node].hostForPods:
			return fmt.Errorf("ipcache %s: host %s, want %s", ip, e.hostIP, wantNodes[we.node].hostForPods)
		case !e.withK8sMeta || e.namespace != we.namespace || e.pod != we.pod:
			return fmt.Errorf("ipcache %s: pod %s/%s, want %s/%s", ip, e.namespace, e.pod, we.namespace, we.pod)
		case e.source != source.ClusterMesh:
			return fmt.Errorf("ipcache %s: source %s, want %s", ip, e.source, source.ClusterMesh)
		}
		got, ok := v.ids[e.id]
		if !ok {
			return fmt.Errorf("ipcache %s: identity %d unknown to the agent", ip, e.id)
		}
		// The labels a Cilium agent of east gives the pod.
		wantKey := key.GetCIDKeyFromLabels(k8sutils.SanitizePodLabels(we.labels, namespace(we.namespace), we.serviceAccount, clusterName), labels.LabelSourceK8s)
		if g, w := (&key.GlobalIdentity{LabelArray: got}).GetKey(), wantKey.GetKey(); g != w {
			return fmt.Errorf("identity %d of %s/%s: labels %s, want %s", e.id, we.namespace, we.pod, g, w)
		}
		used[e.id] = true
	}
	if len(used) != len(v.ids) {
		return fmt.Errorf("identities %v known, endpoints use %v", slices.Sorted(maps.Keys(v.ids)), slices.Sorted(maps.Keys(used)))
	}
	return nil
}

// checkServices: the one global service with its frontend and backends, or
// none.
func (v *view) checkServices(backends []string) error {
	if backends == nil {
		if len(v.services) != 0 {
			return fmt.Errorf("services %v, want none", slices.Sorted(maps.Keys(v.services)))
		}
		return nil
	}
	if got := slices.Sorted(maps.Keys(v.services)); !slices.Equal(got, []string{"shop/checkout"}) {
		return fmt.Errorf("services %v, want [shop/checkout]", got)
	}
	s := v.services["shop/checkout"]
	if !s.Shared || s.Cluster != clusterName || s.ClusterID != clusterID || s.Labels["tier"] != "front" || s.Selector["app"] != "checkout" {
		return fmt.Errorf("service shop/checkout: shared %v cluster %s/%d labels %v selector %v", s.Shared, s.Cluster, s.ClusterID, s.Labels, s.Selector)
	}
	if err := ports(s.Frontends, []string{"10.96.0.10"}, 80); err != nil {
		return fmt.Errorf("service shop/checkout frontends: %w", err)
	}
	if err := ports(s.Backends, backends, 8080); err != nil {
		return fmt.Errorf("service shop/checkout backends: %w", err)
	}
	return nil
}

// ports checks that m has exactly the addresses given, each with the one
// TCP port named http.
func ports(m map[string]serviceStore.PortConfiguration, addrs []string, port uint16) error {
	if got := slices.Sorted(maps.Keys(m)); !slices.Equal(got, addrs) {
		return fmt.Errorf("addresses %v, want %v", got, addrs)
	}
	for a, pc := range m {
		if len(pc) != 1 || pc["http"] == nil || pc["http"].Protocol != loadbalancer.TCP || pc["http"].Port != port {
			return fmt.Errorf("%s: ports %v, want http %d/TCP", a, pc, port)
		}
	}
	return nil
}

// cidrString normalises cidr.CIDR's String of a nil CIDR ("<nil>") to "".
func cidrString(s string) string {
	if s == "<nil>" {
		return ""
	}
	return s
}

// namespace is what SanitizePodLabels reads of a Namespace.
type namespace string

func (n namespace) GetName() string              { return string(n) }
func (n namespace) GetLabels() map[string]string { return namespaceLabels[string(n)] }
