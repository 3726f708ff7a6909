package k8ssource

import (
	"cmp"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/clustermesh/clustermesh/statesource"
)

// model is the cluster's State as the source last delivered it, and what
// it was derived from, kept up to date from the informers' events: the
// objects a batch of events names are read again from the caches and only
// what they derive is recomputed. The next State shares what did not
// change and its Changes name the endpoints that did, so that the mesh
// apiserver publishes only those: a pod's change in a cluster of 100,000
// costs about what it costs in one of 200. Owned by the source's goroutine.
type model struct {
	l *listers

	nodes    map[string]statesource.Node // the nodes a State has, by name
	known    map[string]bool             // their names
	nodeList []statesource.Node          // in name order, as delivered
	zones    map[string]string           // node → its topology.kubernetes.io/zone
	nsLabels map[string]map[string]string

	parts     map[string]map[string]condition // pod → slice → what the slice says of it
	sliceRefs map[string][]string             // slice → the pods it lists
	sliceSvc  map[string]string               // slice → its local service ("" none)
	svcSlices map[string]map[string]bool      // service → its slices

	podNode    map[string]string                // pod → spec.nodeName
	nodePods   map[string]map[string]bool       // node name → pods on it
	candidates map[string]*statesource.Endpoint // pod → its endpoint, before address conflicts
	claims     map[netip.Addr][]string          // address → the pods whose endpoint has it, in pod order
	dupWarned  map[string]bool                  // pods left out for an address another has
	endpoints  map[string]*statesource.Endpoint // the endpoints a State has, by key
	order      []*statesource.Endpoint          // in (namespace, pod) order, as delivered

	services    map[string]statesource.Service // by namespace/name
	serviceList []statesource.Service          // in (namespace, name) order, as delivered
}

func newModel(l *listers) *model {
	return &model{l: l,
		nodes: map[string]statesource.Node{}, known: map[string]bool{}, zones: map[string]string{}, nsLabels: map[string]map[string]string{},
		parts: map[string]map[string]condition{}, sliceRefs: map[string][]string{}, sliceSvc: map[string]string{},
		svcSlices: map[string]map[string]bool{}, podNode: map[string]string{}, nodePods: map[string]map[string]bool{},
		candidates: map[string]*statesource.Endpoint{}, claims: map[netip.Addr][]string{}, dupWarned: map[string]bool{},
		endpoints: map[string]*statesource.Endpoint{}, services: map[string]statesource.Service{}}
}

// keySet is a set of object keys (namespace/name, or name).
type keySet map[string]bool

// events are the keys of the objects informer events named, by kind.
type events struct {
	pods, slices, services, nodes, namespaces keySet
}

func newEvents() events {
	return events{pods: keySet{}, slices: keySet{}, services: keySet{}, nodes: keySet{}, namespaces: keySet{}}
}

// pending gathers the events of the informers' goroutines until the
// source's goroutine takes them.
type pending struct {
	mu sync.Mutex
	ev events // guarded by mu
}

func (p *pending) mark(kind func(*events) keySet, key string) {
	p.mu.Lock()
	kind(&p.ev)[key] = true
	p.mu.Unlock()
}

func (p *pending) take() events {
	p.mu.Lock()
	defer p.mu.Unlock()
	ev := p.ev
	p.ev = newEvents()
	return ev
}

// everything is every object of the caches, as events: the first State.
func (m *model) everything() events {
	ev := newEvents()
	nodes, _ := m.l.nodes.Lister().List(labels.Everything())
	for _, n := range nodes {
		ev.nodes[n.Name] = true
	}
	nss, _ := m.l.ns.Lister().List(labels.Everything())
	for _, ns := range nss {
		ev.namespaces[ns.Name] = true
	}
	all, _ := m.l.slices.Lister().List(labels.Everything())
	for _, s := range all {
		ev.slices[s.Namespace+"/"+s.Name] = true
	}
	pods, _ := m.l.pods.Lister().List(labels.Everything())
	for _, p := range pods {
		ev.pods[p.Namespace+"/"+p.Name] = true
	}
	svcs, _ := m.l.services.Lister().List(labels.Everything())
	for _, s := range svcs {
		ev.services[s.Namespace+"/"+s.Name] = true
	}
	return ev
}

// apply reads again the objects ev names and returns the next State, or
// nil when nothing it has changed. Its Changes say what changed from the
// State before (the caller delivers the first State without).
func (m *model) apply(ev events) *statesource.State {
	m.applyNamespaces(ev)
	nodesChanged := m.applyNodes(ev)
	m.applySlices(ev)
	servicesChanged := m.applyServices(ev)
	changed, removed := m.applyPods(ev)
	if !nodesChanged && !servicesChanged && len(changed) == 0 && len(removed) == 0 {
		return nil
	}
	if nodesChanged {
		m.nodeList = sortedValues(m.nodes, func(a, b statesource.Node) int { return strings.Compare(a.Name, b.Name) })
	}
	if servicesChanged {
		m.serviceList = sortedValues(m.services, func(a, b statesource.Service) int {
			return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
		})
	}
	return &statesource.State{Nodes: m.nodeList, Endpoints: m.order, Services: m.serviceList,
		Changes: &statesource.Changes{Endpoints: changed, RemovedEndpoints: removed, Nodes: nodesChanged, Services: servicesChanged}}
}

// applyNamespaces takes the namespaces' labels; the pods of a namespace
// whose labels changed are read again (their identity labels have them).
func (m *model) applyNamespaces(ev events) {
	for name := range ev.namespaces {
		var now map[string]string
		ns, err := m.l.ns.Lister().Get(name)
		if err == nil {
			now = ns.Labels
		}
		old, had := m.nsLabels[name]
		if had == (err == nil) && maps.Equal(old, now) {
			continue
		}
		if err == nil {
			m.nsLabels[name] = now
		} else {
			delete(m.nsLabels, name)
		}
		pods, _ := m.l.pods.Lister().Pods(name).List(labels.Everything())
		for _, p := range pods {
			ev.pods[p.Namespace+"/"+p.Name] = true
		}
	}
}

// applyNodes reads the nodes ev names again; the pods of a node that came,
// went or changed zone are read again too. It reports whether the nodes
// changed.
func (m *model) applyNodes(ev events) bool {
	changed := false
	for name := range ev.nodes {
		var sn statesource.Node
		ok := false
		n, err := m.l.nodes.Lister().Get(name)
		m.l.recheck("node/"+name, func() {
			if err != nil {
				return
			}
			if sn, ok = m.l.node(n); ok {
				if err := (&statesource.State{Nodes: []statesource.Node{sn}}).Validate(); err != nil {
					m.l.warn("node/"+name, "node left out: "+err.Error())
					ok = false
				}
			}
		})
		old, had := m.nodes[name]
		zone := ""
		if ok {
			zone = n.Labels[corev1.LabelTopologyZone]
		}
		if had != ok || m.zones[name] != zone {
			for p := range m.nodePods[name] {
				ev.pods[p] = true
			}
		}
		if had != ok || (ok && !reflect.DeepEqual(old, sn)) {
			changed = true
		}
		if ok {
			m.nodes[name], m.known[name], m.zones[name] = sn, true, zone
		} else {
			delete(m.nodes, name)
			delete(m.known, name)
			delete(m.zones, name)
		}
	}
	return changed
}

// applySlices reads the slices ev names again: the pods whose conditions
// they change and the services they belong to are read again.
func (m *model) applySlices(ev events) {
	for key := range ev.slices {
		ns, name, _ := strings.Cut(key, "/")
		var now map[string]condition
		svc := ""
		if s, err := m.l.slices.Lister().EndpointSlices(ns).Get(name); err == nil {
			now = sliceParts(s)
			// Slices of remote backends (k8sslices.ManagedBy) name no local port.
			if name := s.Labels[discoveryv1.LabelServiceName]; name != "" && s.Labels[discoveryv1.LabelManagedBy] != "slices.clustermesh.io" {
				svc = ns + "/" + name
			}
		}
		for _, pod := range m.sliceRefs[key] {
			if _, still := now[pod]; !still {
				delete(m.parts[pod], key)
				if len(m.parts[pod]) == 0 {
					delete(m.parts, pod)
				}
				ev.pods[pod] = true
			}
		}
		refs := make([]string, 0, len(now))
		for pod, c := range now {
			refs = append(refs, pod)
			if old, had := m.parts[pod][key]; had && reflect.DeepEqual(old, c) {
				continue
			}
			if m.parts[pod] == nil {
				m.parts[pod] = map[string]condition{}
			}
			m.parts[pod][key] = c
			ev.pods[pod] = true
		}
		setOrDelete(m.sliceRefs, key, refs, len(refs) > 0)
		m.moveSlice(key, svc, ev)
	}
}

// moveSlice records slice key as one of svc's ("" none) and has the
// services it was and is of read again (their named ports come from it).
func (m *model) moveSlice(key, svc string, ev events) {
	if old := m.sliceSvc[key]; old != svc && old != "" {
		delete(m.svcSlices[old], key)
		if len(m.svcSlices[old]) == 0 {
			delete(m.svcSlices, old)
		}
		ev.services[old] = true
	}
	setOrDelete(m.sliceSvc, key, svc, svc != "")
	if svc != "" {
		if m.svcSlices[svc] == nil {
			m.svcSlices[svc] = map[string]bool{}
		}
		m.svcSlices[svc][key] = true
		ev.services[svc] = true
	}
}

// applyServices reads the services ev names again (with their slices and
// ServiceExports); it reports whether the services changed.
func (m *model) applyServices(ev events) bool {
	changed := false
	for key := range ev.services {
		svc, ok := m.service(key)
		old, had := m.services[key]
		if had != ok || (ok && !reflect.DeepEqual(old, svc)) {
			changed = true
		}
		setOrDelete(m.services, key, svc, ok)
	}
	return changed
}

// service derives the service key names, false when it has none.
func (m *model) service(key string) (statesource.Service, bool) {
	var out statesource.Service
	ok := false
	ns, name, _ := strings.Cut(key, "/")
	s, err := m.l.services.Lister().Services(ns).Get(name)
	m.l.recheck("service/"+key, func() {
		if err != nil || s.Spec.Type == corev1.ServiceTypeExternalName {
			return
		}
		out, ok = m.l.service(s, m.slicesOf(key)), true
		if e := m.l.exports.export(key); e != nil {
			out.Export = serviceExport(s, e)
		}
		if err := (&statesource.State{Services: []statesource.Service{out}}).Validate(); err != nil {
			m.l.warn("service/"+key, "service left out: "+err.Error())
			ok = false
		}
	})
	return out, ok
}

// slicesOf returns the service's slices in name order.
func (m *model) slicesOf(svc string) []*discoveryv1.EndpointSlice {
	var out []*discoveryv1.EndpointSlice
	for key := range m.svcSlices[svc] {
		ns, name, _ := strings.Cut(key, "/")
		if s, err := m.l.slices.Lister().EndpointSlices(ns).Get(name); err == nil {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// applyPods reads the pods ev names again and settles which pod of an
// address has it; it returns the endpoints added or changed and the keys
// of those removed, and updates the delivered order.
func (m *model) applyPods(ev events) (changed []*statesource.Endpoint, removed []string) {
	affected := map[netip.Addr]bool{}
	for key := range ev.pods {
		if old := m.candidates[key]; old != nil {
			m.claims[old.IP] = slices.DeleteFunc(m.claims[old.IP], func(k string) bool { return k == key })
			affected[old.IP] = true
		}
		e := m.candidate(key)
		setOrDelete(m.candidates, key, e, e != nil)
		if e != nil {
			i, _ := slices.BinarySearchFunc(m.claims[e.IP], key, comparePodKeys)
			m.claims[e.IP] = slices.Insert(m.claims[e.IP], i, key)
			affected[e.IP] = true
		}
	}
	touched := maps.Clone(ev.pods)
	for ip := range affected {
		if len(m.claims[ip]) == 0 {
			delete(m.claims, ip)
		}
		for _, k := range m.claims[ip] {
			touched[k] = true
		}
	}
	var gone []*statesource.Endpoint
	for key := range touched {
		old := m.endpoints[key]
		now := m.included(key)
		switch {
		case now == nil && old != nil:
			removed = append(removed, key)
			gone = append(gone, old)
			delete(m.endpoints, key)
		case now != nil && (old == nil || !reflect.DeepEqual(*old, *now)):
			changed = append(changed, now)
			if old != nil {
				gone = append(gone, old)
			}
			m.endpoints[key] = now
		}
	}
	slices.Sort(removed)
	slices.SortFunc(changed, compareEndpoints)
	slices.SortFunc(gone, compareEndpoints)
	if len(changed) > 0 || len(removed) > 0 {
		m.order = spliceOrder(m.order, gone, changed)
	}
	return changed, removed
}

// candidate derives the endpoint of the pod key names (nil when it has
// none), and keeps track of its node.
func (m *model) candidate(key string) *statesource.Endpoint {
	ns, name, _ := strings.Cut(key, "/")
	p, err := m.l.pods.Lister().Pods(ns).Get(name)
	node := ""
	if err == nil {
		node = p.Spec.NodeName
	}
	if old := m.podNode[key]; old != node || err != nil {
		delete(m.nodePods[old], key)
		if len(m.nodePods[old]) == 0 {
			delete(m.nodePods, old)
		}
	}
	if err != nil {
		delete(m.podNode, key)
		m.l.recheck("pod/"+key, func() {})
		return nil
	}
	m.podNode[key] = node
	if m.nodePods[node] == nil {
		m.nodePods[node] = map[string]bool{}
	}
	m.nodePods[node][key] = true
	var e statesource.Endpoint
	ok := false
	m.l.recheck("pod/"+key, func() {
		c, listed := m.condition(key)
		if e, ok = m.l.endpoint(p, m.known, m.nsLabels[ns], c, listed); !ok {
			return
		}
		e.Zone = cmp.Or(e.Zone, m.zones[e.Node])
		if err := statesource.CheckEndpoint(&e, m.known); err != nil {
			m.l.warn("pod/"+key, "pod left out: "+err.Error())
			ok = false
		}
	})
	if !ok {
		return nil
	}
	return &e
}

// condition is what the slices that list the pod say of it, in the
// slices' order; listed is false when none does.
func (m *model) condition(pod string) (condition, bool) {
	parts := m.parts[pod]
	if len(parts) == 0 {
		return condition{}, false
	}
	keys := slices.SortedFunc(maps.Keys(parts), comparePodKeys)
	in := make([]condition, len(keys))
	for i, k := range keys {
		in[i] = parts[k]
	}
	return foldParts(in), true
}

// included is the pod's endpoint if the State has it: it has an endpoint
// and is the first pod of its address.
func (m *model) included(key string) *statesource.Endpoint {
	e := m.candidates[key]
	if e == nil {
		delete(m.dupWarned, key)
		return nil
	}
	if first := m.claims[e.IP][0]; first != key {
		if !m.dupWarned[key] {
			m.dupWarned[key] = true
			m.l.log.Warn("pod left out: its IP is already used by another pod", "object", "pod/"+key, "ip", e.IP, "other", first)
		}
		return nil
	}
	delete(m.dupWarned, key)
	return e
}

// spliceOrder is order without gone (endpoints of order) and with add
// merged in, both in order: a new slice (a delivered State's is never
// modified), copied in runs between the places they change.
func spliceOrder(order, gone, add []*statesource.Endpoint) []*statesource.Endpoint {
	at := func(e *statesource.Endpoint) int {
		i, _ := slices.BinarySearchFunc(order, e, compareEndpoints)
		return i
	}
	out := make([]*statesource.Endpoint, 0, len(order)-len(gone)+len(add))
	i, gi, ai := 0, 0, 0
	for gi < len(gone) || ai < len(add) {
		next := len(order)
		if ai < len(add) {
			next = at(add[ai])
		}
		if gi < len(gone) {
			next = min(next, at(gone[gi]))
		}
		out = append(out, order[i:next]...)
		i = next
		for ai < len(add) && at(add[ai]) == next { // before what stands there
			out = append(out, add[ai])
			ai++
		}
		if gi < len(gone) && at(gone[gi]) == next {
			i = next + 1
			gi++
		}
	}
	return append(out, order[i:]...)
}

// compareEndpoints orders endpoints by namespace, then pod.
func compareEndpoints(a, b *statesource.Endpoint) int {
	return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Pod, b.Pod))
}

// comparePodKeys orders namespace/name keys by namespace, then name.
func comparePodKeys(a, b string) int {
	ans, an, _ := strings.Cut(a, "/")
	bns, bn, _ := strings.Cut(b, "/")
	return cmp.Or(strings.Compare(ans, bns), strings.Compare(an, bn))
}

func sortedValues[V any](m map[string]V, cmp func(a, b V) int) []V {
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, cmp)
	return out
}

func setOrDelete[V any](m map[string]V, key string, v V, set bool) {
	if set {
		m[key] = v
	} else {
		delete(m, key)
	}
}
