package k8ssource

import (
	"cmp"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// listers reads the informers' caches and builds States from them.
type listers struct {
	services  coreinformers.ServiceInformer
	slices    discoveryinformers.EndpointSliceInformer
	pods      coreinformers.PodInformer
	ns        coreinformers.NamespaceInformer
	nodes     coreinformers.NodeInformer
	exports   *exportInformer // nil: ServiceExports not read
	log       *slog.Logger
	coalesced time.Duration

	// warnings holds the warnings (object, NUL, message) logged and still
	// true, so that an object left out of every State is logged once, not
	// each time it is read again; checking those of the object being
	// read again (recheck).
	warnings map[string]bool
	checking map[string]bool
}

func (l *listers) warn(object, msg string, args ...any) {
	key := object + "\x00" + msg
	if l.checking != nil {
		l.checking[key] = true
	}
	if l.warnings[key] {
		return
	}
	l.warnings[key] = true
	l.log.Warn(msg, append([]any{"object", object}, args...)...)
}

// recheck derives object again with derive: its warnings that derive no
// longer gives are forgotten (logged again if they return).
func (l *listers) recheck(object string, derive func()) {
	l.checking = map[string]bool{}
	derive()
	prefix := object + "\x00"
	for k := range l.warnings {
		if strings.HasPrefix(k, prefix) && !l.checking[k] {
			delete(l.warnings, k)
		}
	}
	l.checking = nil
}

func (l *listers) node(n *corev1.Node) (statesource.Node, bool) {
	sn := statesource.Node{Name: n.Name}
	for _, typ := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type != typ {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil || ip.Zone() != "" {
				l.warn("node/"+n.Name, "node address ignored: not an IP address", "address", a.Address)
				continue
			}
			if ip = ip.Unmap(); !slices.Contains(sn.IPs, ip) {
				sn.IPs = append(sn.IPs, ip)
			}
		}
		if len(sn.IPs) > 0 {
			break // ExternalIPs only when there is no InternalIP
		}
	}
	if len(sn.IPs) == 0 {
		l.warn("node/"+n.Name, "node left out: it has no InternalIP or ExternalIP address yet")
		return sn, false
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil || p.Masked() != p {
			l.warn("node/"+n.Name, "node pod CIDR ignored: not a prefix with its host bits zero", "podCIDR", c)
			continue
		}
		sn.PodCIDRs = append(sn.PodCIDRs, p)
	}
	sn.Annotations = l.nodeAnnotations(n)
	if k := n.Annotations[AnnotationWireguardPubKey]; k != "" {
		if err := statesource.CheckPublicKey(k); err != nil {
			l.warn("node/"+n.Name, "node WireGuard key ignored: "+err.Error(), "annotation", AnnotationWireguardPubKey)
		} else {
			sn.WireguardPubKey = k
		}
	}
	return sn, true
}

// nodeAnnotations are the annotations of n the node entry publishes: those
// under clustermesh.io/ only (a Node carries much else), the Hubble address
// only when it is host:port.
func (l *listers) nodeAnnotations(n *corev1.Node) map[string]string {
	var out map[string]string
	for k, v := range n.Annotations {
		if !strings.HasPrefix(k, publishedNodeAnnotations) {
			continue
		}
		if k == wire.AnnotationHubbleAddress {
			if err := wire.CheckHubbleAddress(v); err != nil {
				l.warn("node/"+n.Name, "node annotation ignored: "+err.Error(), "annotation", k)
				continue
			}
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = v
	}
	return out
}

// publishedNodeAnnotations is the prefix of the Node annotations published
// on the node entry.
const publishedNodeAnnotations = "clustermesh.io/"

// condition is a pod's readiness as the EndpointSlices that list it say,
// and the topology they give it (the first slice's that gives any).
type condition struct {
	ready, serving bool
	zone, hostname string
	forZones       []string
}

// sliceParts is what one EndpointSlice says of each pod it lists (by
// namespace/name): ready (serving) only if every entry of the pod says so,
// and the first topology its entries give.
func sliceParts(s *discoveryv1.EndpointSlice) map[string]condition {
	out := map[string]condition{}
	for _, ep := range s.Endpoints {
		if ep.TargetRef == nil || ep.TargetRef.Kind != "Pod" || ep.TargetRef.Name == "" {
			continue
		}
		key := cmp.Or(ep.TargetRef.Namespace, s.Namespace) + "/" + ep.TargetRef.Name
		// Unset conditions: ready; serving follows ready; a terminating
		// endpoint is never ready.
		ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
		serving := ready
		if ep.Conditions.Serving != nil {
			serving = *ep.Conditions.Serving
		}
		if ep.Conditions.Terminating != nil && *ep.Conditions.Terminating {
			ready = false
		}
		c, seen := out[key]
		if !seen {
			c = condition{ready: true, serving: true}
		}
		c.ready, c.serving = c.ready && ready, c.serving && serving
		c.topology(ep)
		out[key] = c
	}
	return out
}

// foldParts is a pod's condition from what the slices that list it say, in
// the slices' (namespace, name) order: ready (serving) only if every one
// says so, each of its zone, hostname and hint zones from the first that
// gives one.
func foldParts(parts []condition) condition {
	c := condition{ready: true, serving: true}
	for _, p := range parts {
		c.ready, c.serving = c.ready && p.ready, c.serving && p.serving
		c.zone = cmp.Or(c.zone, p.zone)
		c.hostname = cmp.Or(c.hostname, p.hostname)
		if c.forZones == nil {
			c.forZones = p.forZones
		}
	}
	return c
}

// topology takes ep's zone, hostname and hint zones where c has none yet.
func (c *condition) topology(ep discoveryv1.Endpoint) {
	if c.zone == "" && ep.Zone != nil {
		c.zone = *ep.Zone
	}
	if c.hostname == "" && ep.Hostname != nil {
		c.hostname = *ep.Hostname
	}
	if c.forZones == nil && ep.Hints != nil && len(ep.Hints.ForZones) > 0 {
		for _, z := range ep.Hints.ForZones {
			c.forZones = append(c.forZones, z.Name)
		}
	}
}

// endpoint is the pod's endpoint, if it has one: c is what the slices that
// list it say (listed false: none does, its own Ready condition counts).
func (l *listers) endpoint(p *corev1.Pod, knownNodes map[string]bool, nsLabels map[string]string, c condition, listed bool) (statesource.Endpoint, bool) {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return statesource.Endpoint{}, false // host identity, or no longer running
	}
	addr := p.Status.PodIP
	if len(p.Status.PodIPs) > 0 {
		addr = p.Status.PodIPs[0].IP
	}
	if addr == "" {
		return statesource.Endpoint{}, false // not started yet
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil || ip.Zone() != "" {
		l.warn("pod/"+p.Namespace+"/"+p.Name, "pod left out: its IP does not parse", "ip", addr)
		return statesource.Endpoint{}, false
	}
	e := statesource.Endpoint{Namespace: p.Namespace, Pod: p.Name, IP: ip.Unmap()}
	if knownNodes[p.Spec.NodeName] {
		e.Node = p.Spec.NodeName
	}
	// The pod's own labels (what services select), its namespace's labels
	// and its service account: IdentityLabels makes Cilium's identity
	// labels of them (as pkg/k8s/labels.go does with SanitizePodLabels).
	// Informer objects are never modified, so their maps are shared.
	e.Labels, e.NamespaceLabels, e.ServiceAccount = p.Labels, nsLabels, p.Spec.ServiceAccountName
	e.Workload = workloadOf(p).String()
	if !listed {
		ready := false
		for _, pc := range p.Status.Conditions {
			if pc.Type == corev1.PodReady {
				ready = pc.Status == corev1.ConditionTrue
			}
		}
		c = condition{ready: ready && p.DeletionTimestamp == nil, serving: ready}
	}
	if !c.ready {
		e.Ready = ptr(false)
	}
	if c.serving != c.ready {
		e.Serving = ptr(c.serving)
	}
	e.Zone, e.Hostname, e.ForZones = c.zone, c.hostname, c.forZones
	return e, true
}

func (l *listers) service(s *corev1.Service, svcSlices []*discoveryv1.EndpointSlice) statesource.Service {
	out := statesource.Service{
		Namespace: s.Namespace, Name: s.Name,
		Selector: s.Spec.Selector, Labels: s.Labels,
	}
	if ip, err := netip.ParseAddr(s.Spec.ClusterIP); err == nil && ip.Zone() == "" {
		out.ClusterIP = ip.Unmap()
	}
	for k, v := range s.Annotations {
		if strings.HasPrefix(k, "service.cilium.io/") || strings.HasPrefix(k, "clustermesh.io/") {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	for _, p := range s.Spec.Ports {
		sp := statesource.ServicePort{Name: p.Name, Port: uint16(p.Port), Protocol: string(p.Protocol)}
		switch {
		case p.TargetPort.Type == intstr.Int:
			sp.TargetPort = uint16(p.TargetPort.IntVal)
		case p.TargetPort.StrVal != "":
			sp.TargetPort = namedTargetPort(svcSlices, p.Name)
			if sp.TargetPort == 0 {
				l.warn(fmt.Sprintf("service/%s/%s", s.Namespace, s.Name), "service port: named targetPort not resolved by any EndpointSlice yet, using the service port",
					"port", p.Name, "targetPort", p.TargetPort.StrVal)
			}
		}
		out.Ports = append(out.Ports, sp)
	}
	return out
}

// namedTargetPort is the port number the service's EndpointSlices give the
// service port named name (the endpoint slice controller resolves named
// target ports per pod; the first slice that names it wins).
func namedTargetPort(svcSlices []*discoveryv1.EndpointSlice, name string) uint16 {
	for _, s := range svcSlices {
		for _, p := range s.Ports {
			if p.Name != nil && *p.Name == name && p.Port != nil && *p.Port > 0 && *p.Port <= 65535 {
				return uint16(*p.Port)
			}
		}
	}
	return 0
}

func ptr[T any](v T) *T { return &v }

// workloadOf is the pod's owning workload, from its controller owner
// reference: a ReplicaSet named after a Deployment's pod template hash is
// that Deployment (as Hubble names it); a pod without a controller is its
// own. A kind or name the mesh does not know is left out.
func workloadOf(p *corev1.Pod) wire.Workload {
	w := wire.Workload{Kind: "Pod", Name: p.Name}
	for _, o := range p.OwnerReferences {
		if o.Controller == nil || !*o.Controller {
			continue
		}
		w = wire.Workload{Kind: o.Kind, Name: o.Name}
		if hash := p.Labels["pod-template-hash"]; o.Kind == "ReplicaSet" && hash != "" {
			if name, ok := strings.CutSuffix(o.Name, "-"+hash); ok {
				w = wire.Workload{Kind: "Deployment", Name: name}
			}
		}
	}
	if _, err := wire.ParseWorkload(w.String()); err != nil {
		return wire.Workload{}
	}
	return w
}
