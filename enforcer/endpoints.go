package enforcer

import (
	"slices"
	"strings"

	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/policy"
	"github.com/clustermesh/clustermesh/statesource"
)

// Endpoint states in Status.
const (
	StateEnforcing   = "enforcing"            // programs attached
	StateNotEnforced = "not-enforced"         // in-memory datapath: computed only
	StateNoInterface = "no-interface"         // its host-side interface is not (yet) there: not named in the state, and no veth routes its address
	StateNoIdentity  = "waiting-for-identity" // the cluster's apiserver has not published it (yet)
	StateError       = "error"                // attaching failed (retried)
)

// endpoints reconciles the attachments of the node's endpoints. Owned by
// Run's goroutine.
type endpoints struct {
	attacher Attacher
	// attached is what this run attached (or adopted from the previous
	// run), by interface index.
	attached map[int]tcpolicy.Endpoint
	adopted  bool // the previous run's attachments were read
	statuses []EndpointStatus
	// retry: an endpoint waits for its interface or a failed attach: look
	// again at every tick.
	retry bool
}

// reconcileEndpoints attaches the programs to every endpoint of this node
// with the identity and enforced directions it should have, and detaches
// interfaces whose endpoint is gone. It runs on every step, as interfaces
// appear on their own time.
func (e *Enforcer) reconcileEndpoints(st *statesource.State) {
	eps := &e.eps
	if st == nil {
		return
	}
	if eps.attacher != nil && !eps.adopted {
		prev, err := eps.attacher.Attachments()
		if err != nil {
			e.log.Error("reading the previous run's policy attachments", "err", err)
			return
		}
		eps.attached, eps.adopted = prev, true
	}
	var ifaces Interfaces
	if eps.attacher != nil {
		var err error
		if ifaces, err = eps.attacher.Interfaces(); err != nil {
			e.log.Error("listing interfaces", "err", err)
			return
		}
	}
	want := map[int]bool{}
	eps.statuses = eps.statuses[:0]
	for i := range st.Endpoints {
		ep := st.Endpoints[i]
		if ep.Node != e.cfg.NodeName {
			continue
		}
		s := e.endpointStatus(ep)
		switch {
		case s.State != StateEnforcing:
		case eps.attacher == nil:
			s.State = StateNotEnforced
		default:
			ifindex, name, ok := ifaces.lookup(ep.Interface, ep.IP)
			if !ok {
				s.State = StateNoInterface
				break
			}
			s.Interface = name
			want[ifindex] = true
			s.State, s.Error = e.attach(ifindex, s)
		}
		eps.statuses = append(eps.statuses, s)
	}
	for ifindex := range eps.attached {
		if want[ifindex] {
			continue
		}
		if err := eps.attacher.Detach(ifindex); err != nil {
			e.log.Error("detaching the policy of a gone endpoint", "ifindex", ifindex, "err", err)
			continue
		}
		delete(eps.attached, ifindex)
		e.log.Info("endpoint gone: policy detached", "ifindex", ifindex)
	}
	eps.retry = false
	for _, s := range eps.statuses {
		eps.retry = eps.retry || s.State == StateNoInterface || s.State == StateError
	}
	slices.SortFunc(eps.statuses, func(a, b EndpointStatus) int {
		return strings.Compare(a.Namespace+"/"+a.Pod, b.Namespace+"/"+b.Pod)
	})
}

// endpointStatus resolves an endpoint's identity and enforced directions;
// State is StateEnforcing when it can be attached.
func (e *Enforcer) endpointStatus(ep *statesource.Endpoint) EndpointStatus {
	s := EndpointStatus{Namespace: ep.Namespace, Pod: ep.Pod, Interface: ep.Interface, State: StateEnforcing}
	id, ok := e.byLabels[ep.IdentityLabels(e.cfg.ClusterName).String()]
	if !ok {
		s.State = StateNoIdentity
	}
	s.Identity = id
	if p := e.engine.Endpoint(id); ok && p != nil {
		s.EnforceIngress, s.EnforceEgress = p.Enforced[policy.Ingress], p.Enforced[policy.Egress]
	}
	s.Audit = e.cfg.audited(ep.Namespace)
	return s
}

// attach makes interface ifindex enforce s, if it does not already.
func (e *Enforcer) attach(ifindex int, s EndpointStatus) (state, errMsg string) {
	want := tcpolicy.Endpoint{Identity: s.Identity, EnforceIngress: s.EnforceIngress, EnforceEgress: s.EnforceEgress, Audit: s.Audit}
	if cur, ok := e.eps.attached[ifindex]; ok && cur == want {
		return StateEnforcing, ""
	}
	if err := e.eps.attacher.Attach(ifindex, want); err != nil {
		e.log.Error("attaching policy", "pod", s.Namespace+"/"+s.Pod, "interface", s.Interface, "err", err)
		delete(e.eps.attached, ifindex)
		return StateError, err.Error()
	}
	e.eps.attached[ifindex] = want
	e.log.Info("policy attached", "pod", s.Namespace+"/"+s.Pod, "interface", s.Interface, "identity", s.Identity,
		"ingress", s.EnforceIngress, "egress", s.EnforceEgress, "audit", s.Audit)
	return StateEnforcing, ""
}
