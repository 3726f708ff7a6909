package meshapiserver

import (
	"net/netip"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// nodeSource is the Source field of the nodes this apiserver publishes.
const nodeSource = "clustermesh"

// desiredKV is what the store should hold under the state prefixes and the
// local view's: full key → encoded value.
type desiredKV map[string][]byte

// desired computes the entries that publish st for cluster c, allocating
// identities as needed (endpoints as cache has them are not encoded again).
// Of the endpoints, only those mode exports are published, with their
// identities; when mode holds some back, every endpoint and its identity
// is also published in the local view (wire.LocalViewPrefix). It reports
// whether new identities were allocated and how many endpoints were held
// back.
func desired(c wire.Cluster, st *statesource.State, mode ExportMode, ids *identityAllocator, cache *endpointCache) (kv desiredKV, allocated bool, held int, err error) {
	var index *statesource.SelectorIndex // built for the first that needs it
	ix := func() *statesource.SelectorIndex {
		if index == nil {
			index = statesource.NewSelectorIndex(st)
		}
		return index
	}
	scope := newExportScope(mode, st, ix)
	view := mode.localView()
	size := len(st.Nodes) + 2*len(st.Endpoints) + len(st.Services)
	if view {
		size += 2 * len(st.Endpoints)
	}
	kv = make(desiredKV, size)
	nodeIP := make(map[string]netip.Addr, len(st.Nodes))
	for i := range st.Nodes {
		n := &st.Nodes[i]
		nodeIP[n.Name] = n.IPs[0]
		v, err := wire.EncodeNode(wireNode(c, n))
		if err != nil {
			return nil, false, 0, err
		}
		kv[wire.NodeKey(c.Name, n.Name)] = v
	}
	cache.begin()
	for i := range st.Endpoints {
		e := st.Endpoints[i]
		exported := scope.exported(e)
		if !exported {
			held++
			if !view {
				continue
			}
		}
		ce, isNew, err := endpointEntries(c, e, nodeIP[e.Node], ids, cache)
		if err != nil {
			return nil, false, 0, err
		}
		allocated = allocated || isNew
		if view {
			cache.viewKeys(ce)
		}
		idEntry := cache.identities[ce.id]
		if exported {
			kv[idEntry.key] = idEntry.val
			kv[ce.ipcache.key] = ce.ipcache.val
		}
		if view {
			kv[idEntry.local] = idEntry.val
			kv[ce.ipcache.local] = ce.ipcache.val
		}
	}
	cache.sweep()
	for i := range st.Services {
		s := &st.Services[i]
		if !s.Shared() {
			continue // only global services that export their backends are published
		}
		v, err := wire.EncodeService(clusterService(c, ix(), scope, s))
		if err != nil {
			return nil, false, 0, err
		}
		kv[wire.ServiceKey(c.Name, s.Namespace, s.Name)] = v
	}
	if err := addServiceExports(c, st, kv); err != nil {
		return nil, false, 0, err
	}
	cache.inc.rebuild(st, mode, scope, ix, cache, nodeIP)
	return kv, allocated, held, nil
}

// endpointEntries returns e's published entries (its ipcache entry and
// identity), from cache when e is as it was published, else encoded anew
// (allocating its identity: reported by isNew). Its identity's entry is in
// cache.identities afterwards.
func endpointEntries(c wire.Cluster, e *statesource.Endpoint, hostIP netip.Addr, ids *identityAllocator, cache *endpointCache) (ce *cachedEndpoint, isNew bool, err error) {
	if ce, ok := cache.lookup(e, hostIP); ok {
		cache.identity(ce.id, func() wire.Labels { return e.IdentityLabels(c.Name) })
		return ce, false, nil
	}
	ls := e.IdentityLabels(c.Name)
	id, isNew, err := ids.allocate(ls)
	if err != nil {
		return nil, false, err
	}
	ip := e.IP.Unmap() // the one spelling agents accept
	pair := &wire.IPIdentityPair{IP: ip, HostIP: hostIP, ID: id, K8sNamespace: e.Namespace, K8sPodName: e.Pod, Workload: e.Workload}
	v, err := wire.EncodeIPIdentityPair(pair)
	if err != nil {
		return nil, false, err
	}
	ce = cache.store(e, hostIP, id, encodedEntry{key: wire.IPCachePrefixKey(netip.PrefixFrom(ip, ip.BitLen())), val: v})
	cache.identity(id, func() wire.Labels { return ls })
	return ce, isNew, nil
}

func wireNode(c wire.Cluster, n *statesource.Node) *wire.Node {
	w := &wire.Node{Name: n.Name, Cluster: c.Name, ClusterID: c.ID, Source: nodeSource, WireguardPubKey: n.WireguardPubKey, Annotations: n.Annotations}
	for _, ip := range n.IPs {
		w.IPAddresses = append(w.IPAddresses, wire.NodeAddress{Type: wire.InternalIP, IP: ip})
	}
	for _, p := range n.PodCIDRs {
		if p.Addr().Is4() && w.IPv4AllocCIDR == nil {
			w.IPv4AllocCIDR = &wire.CIDR{Prefix: p}
		} else if p.Addr().Is6() && w.IPv6AllocCIDR == nil {
			w.IPv6AllocCIDR = &wire.CIDR{Prefix: p}
		}
	}
	return w
}

// clusterService builds the published form of a global service: its
// ClusterIP as frontend and the exported endpoints that are ready or
// serving as backends, on each port's target port.
func clusterService(c wire.Cluster, ix *statesource.SelectorIndex, scope *exportScope, s *statesource.Service) *wire.ClusterService {
	cs := &wire.ClusterService{
		Cluster: c.Name, ClusterID: c.ID, Namespace: s.Namespace, Name: s.Name,
		Frontends: map[string]wire.PortConfiguration{}, Backends: map[string]wire.PortConfiguration{},
		Labels: s.Labels, Selector: s.Selector, Shared: true, IncludeExternal: true,
	}
	if cs.Labels == nil {
		cs.Labels = map[string]string{}
	}
	if s.ClusterIP.IsValid() {
		fe := wire.PortConfiguration{}
		for _, p := range s.Ports {
			fe[portName(p)] = &wire.L4Addr{Protocol: p.Proto(), Port: p.Port}
		}
		cs.Frontends[s.ClusterIP.String()] = fe
	}
	ready := map[string]bool{} // a published backend's: any of its endpoints ready
	for _, e := range ix.Backends(s) {
		if !e.IsServing() || !scope.exported(e) {
			continue
		}
		be := wire.PortConfiguration{}
		for _, p := range s.Ports {
			be[portName(p)] = &wire.L4Addr{Protocol: p.Proto(), Port: p.Target()}
		}
		cs.Backends[e.IP.String()] = be
		ready[e.IP.String()] = ready[e.IP.String()] || e.IsReady()
		publishTopology(cs, e)
	}
	// A serving backend that is not ready is terminating: it stays in
	// Backends (Cilium keeps it active) and is named in our own
	// clustermesh.io/terminating, for the remotes' EndpointSlices.
	for ip, r := range ready {
		if !r {
			cs.AddTerminating(ip)
		}
	}
	return cs
}

// publishTopology adds e's hostname and zone to cs as Cilium's operator
// does (operator/watchers/service_sync.go): a hostname when it has one, a
// zone with its hint zones when it has a zone.
func publishTopology(cs *wire.ClusterService, e *statesource.Endpoint) {
	ip := e.IP.String()
	if e.Hostname != "" {
		if cs.Hostnames == nil {
			cs.Hostnames = map[string]string{}
		}
		cs.Hostnames[ip] = e.Hostname
	}
	if e.Zone != "" {
		if cs.Zones == nil {
			cs.Zones = map[string]wire.BackendZone{}
		}
		z := wire.BackendZone{Zone: e.Zone}
		for _, f := range e.ForZones {
			z.ForZones = append(z.ForZones, wire.ForZone{Name: f})
		}
		cs.Zones[ip] = z
	}
}

// portName is the key of a port in the published maps: its name, empty for
// the single unnamed port of a service (as in Kubernetes and Cilium).
func portName(p statesource.ServicePort) string { return p.Name }
