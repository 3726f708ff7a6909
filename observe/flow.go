// Package observe owns turning the datapath's flow events into Hubble's
// flows and serving them with Hubble's own Observer API: Enrich fills a
// flowpb.Flow from a flows.Flow, naming its ends (cluster, namespace, pod,
// identity labels, service) through an Enricher; a Hub reads the events,
// keeps the last ones in a ring, hands every flow to hooks on the reading
// goroutine (metrics) and fans them out to subscribers that never slow the
// reader down; Server is observerpb.ObserverServer on a Hub, so the real
// `hubble` CLI, a relay and `clustermesh observe` read an agent alike.
//
// It knows nothing of etcd or agentsync: the agent implements Enricher from
// what it holds and serves Server on its sockets.
package observe

import (
	"net/netip"
	"slices"
	"strconv"
	"sync"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/wire"
)

// Enricher names the ends of a flow. The agent implements it from the
// identities, ipcache entries, local endpoints and services it holds. Its
// methods are called for every flow on the reading goroutine: they must be
// fast (map lookups) and safe for concurrent use with the agent's updates.
type Enricher interface {
	// Identity returns the labels of a numeric security identity.
	Identity(id uint32) (wire.Labels, bool)
	// ClusterName returns the name of a cluster id, "" if unknown.
	ClusterName(id uint16) string
	// Pod names the pod with address ip in cluster (the cluster id the
	// datapath's ipcache gives the address; the local cluster's for a
	// local endpoint).
	Pod(ip netip.Addr, cluster uint16) (Pod, bool)
	// Service names the service whose frontend is addr.
	Service(frontend netip.AddrPort) (namespace, name string, ok bool)
}

// DNSNamer is implemented by an Enricher that knows the DNS names allowed
// answers gave for addresses (the agent's FQDN cache): a flow's
// source_names and destination_names, which Hubble's --from-fqdn and
// --to-fqdn match. It is asked only for peers of the world identity or a
// node-local one (the identities of FQDN-selected addresses).
type DNSNamer interface {
	DNSNames(addr netip.Addr) []string
}

// Pod names a pod of the mesh.
type Pod struct {
	Cluster, Namespace, Name string
	// Workload is the pod's owner (Deployment, StatefulSet, ...) when the
	// state source knows it; its Name is empty otherwise.
	Workload Workload
}

// Workload is a pod's owning workload.
type Workload struct{ Kind, Name string }

// Hubble's CiliumEventType.type numbers (Cilium's monitor message types).
const (
	eventDrop          = 1
	eventTrace         = 4
	eventPolicyVerdict = 5
	eventTraceSock     = 7
)

// Cilium's trace sub-types (observation points) of the policy programs'
// trace events: the packet went to the endpoint, or came from it.
const (
	traceToLxc   = 0
	traceToProxy = 1 // Cilium's TRACE_TO_PROXY: a packet sent to the L7 proxy
	traceFromLxc = 5
)

// enricher is the per-Hub state of Enrich: the labels of the identities
// seen, formatted once.
type enricher struct {
	e    Enricher
	node string // cluster/node
	// maxClusters is the mesh size (255 or 511), which tells the cluster
	// of an identity in an L7 flow.
	maxClusters uint32
	mu          sync.Mutex
	labels      map[uint32]cachedLabels // guarded by mu

}

type cachedLabels struct {
	src wire.Labels
	out []string
}

// maxCachedIdentities bounds the formatted labels kept; the cache starts
// over when it is full.
const maxCachedIdentities = 16384

func newEnricher(e Enricher, node string, maxClusters uint32) *enricher {
	return &enricher{e: e, node: node, maxClusters: maxClusters, labels: map[uint32]cachedLabels{}}
}

// flow turns a datapath flow into Hubble's flow. The result and its parts
// are shared with every reader: never modify them.
func (x *enricher) flow(f flows.Flow) *flowpb.Flow {
	out := &flowpb.Flow{
		Time:             timestamppb.New(f.Time),
		Verdict:          verdict(f.Verdict),
		Type:             flowpb.FlowType_L3_L4,
		NodeName:         x.node,
		IP:               ip(f),
		L4:               layer4(f),
		Source:           x.endpoint(f.Src.Addr(), f.SrcIdentity, f.SrcCluster),
		Destination:      x.endpoint(f.Dst.Addr(), f.DstIdentity, f.DstCluster),
		TrafficDirection: direction(f.Direction),
		IsReply:          wrapperspb.Bool(f.Reply),
		ProxyPort:        uint32(f.ProxyPort),
	}
	out.SourceNames = x.dnsNames(f.Src.Addr(), f.SrcIdentity)
	out.DestinationNames = x.dnsNames(f.Dst.Addr(), f.DstIdentity)
	fillDeprecated(out, f.Reply)
	switch kind(f) {
	case flows.KindSockTranslate:
		x.sockTranslation(f, out)
	case flows.KindPolicyVerdict:
		out.EventType = &flowpb.CiliumEventType{Type: eventPolicyVerdict}
		out.PolicyMatchType = uint32(f.MatchType)
		if f.Verdict == flows.VerdictDropped {
			// As Cilium's: a denied verdict carries its drop reason.
			out.DropReasonDesc = flowpb.DropReason_POLICY_DENIED
			if f.DropReason != flows.DropNone {
				out.DropReasonDesc = dropReason(f.DropReason)
			}
			setDropReason(out)
		}
		x.packet(f, out)
	case flows.KindDrop:
		out.DropReasonDesc = dropReason(f.DropReason)
		setDropReason(out)
		out.EventType = &flowpb.CiliumEventType{Type: eventDrop, SubType: int32(out.DropReasonDesc)}
		x.packet(f, out)
	default:
		out.EventType = &flowpb.CiliumEventType{Type: eventTrace, SubType: traceToLxc}
		if f.Direction == datapath.Egress {
			out.EventType.SubType = traceFromLxc
		}
		if f.ProxyPort != 0 {
			out.EventType.SubType = traceToProxy
		}
		x.packet(f, out)
	}
	setSummary(out)
	return out
}

// Hubble's deprecated fields, which its own parser still fills and older
// clients read (hubble's compact output prints Summary).

//lint:ignore SA1019 filled as Hubble fills it, for clients that read it
func fillDeprecated(out *flowpb.Flow, reply bool) { out.Reply = reply }

//lint:ignore SA1019 filled as Hubble fills it, for clients that read it
func setDropReason(out *flowpb.Flow) { out.DropReason = uint32(out.DropReasonDesc) }

//lint:ignore SA1019 filled as Hubble fills it, for clients that read it
func setSummary(out *flowpb.Flow) { out.Summary = summary(out) }

// kind is f's kind; events of programs that predate kinds have none.
func kind(f flows.Flow) flows.Kind {
	if f.Kind != 0 {
		return f.Kind
	}
	if f.Verdict == flows.VerdictDropped {
		return flows.KindDrop
	}
	return flows.KindTrace
}

// packet fills what a packet seen on an endpoint's veth says: its
// interface and where it was seen. The policy programs sit on the
// endpoint's host-side veth: egress of the endpoint leaves it
// (FROM_ENDPOINT), ingress goes to it (TO_ENDPOINT).
func (x *enricher) packet(f flows.Flow, out *flowpb.Flow) {
	out.Interface = &flowpb.NetworkInterface{Index: uint32(f.Ifindex)}
	out.TraceObservationPoint = flowpb.TraceObservationPoint_FROM_ENDPOINT
	if f.Direction == datapath.Ingress {
		out.TraceObservationPoint = flowpb.TraceObservationPoint_TO_ENDPOINT
	}
}

// sockTranslation fills a socket load balancer's translation: the service
// asked for, the backend chosen.
func (x *enricher) sockTranslation(f flows.Flow, out *flowpb.Flow) {
	out.Type = flowpb.FlowType_SOCK
	out.EventType = &flowpb.CiliumEventType{Type: eventTraceSock}
	out.SockXlatePoint = flowpb.SocketTranslationPoint(f.XlatePoint)
	out.SocketCookie, out.CgroupId = f.SocketCookie, f.CgroupID
	out.IsReply = nil
	fillDeprecated(out, false)
	if x.e != nil {
		if ns, name, ok := x.e.Service(f.Service); ok {
			out.DestinationService = &flowpb.Service{Namespace: ns, Name: name}
		}
	}
}

func verdict(v flows.Verdict) flowpb.Verdict {
	switch v {
	case flows.VerdictForwarded:
		return flowpb.Verdict_FORWARDED
	case flows.VerdictDropped:
		return flowpb.Verdict_DROPPED
	case flows.VerdictAudit:
		return flowpb.Verdict_AUDIT
	case flows.VerdictRedirected:
		return flowpb.Verdict_REDIRECTED
	case flows.VerdictTranslated:
		return flowpb.Verdict_TRANSLATED
	}
	return flowpb.Verdict_VERDICT_UNKNOWN
}

func dropReason(r flows.DropReason) flowpb.DropReason {
	switch r {
	case flows.DropPolicyDenied:
		return flowpb.DropReason_POLICY_DENIED
	case flows.DropInvalidPacket:
		return flowpb.DropReason_INVALID_PACKET_DROPPED
	case flows.DropProxyUnavailable:
		return flowpb.DropReason_SOCKET_LOOKUP_FAILED
	}
	return flowpb.DropReason_DROP_REASON_UNKNOWN
}

func direction(d datapath.Direction) flowpb.TrafficDirection {
	if d == datapath.Ingress {
		return flowpb.TrafficDirection_INGRESS
	}
	return flowpb.TrafficDirection_EGRESS
}

// tcpFlagsOf is Hubble's form of a packet's TCP flags.
func tcpFlagsOf(t flows.TCPFlags) *flowpb.TCPFlags {
	return &flowpb.TCPFlags{FIN: t.FIN(), SYN: t.SYN(), RST: t.RST(), PSH: t.PSH(), ACK: t.ACK(), URG: t.URG(), ECE: t.ECE(), CWR: t.CWR()}
}

func ip(f flows.Flow) *flowpb.IP {
	src, dst := f.Src.Addr().Unmap(), f.Dst.Addr().Unmap()
	v := flowpb.IPVersion_IPv4
	if dst.Is6() {
		v = flowpb.IPVersion_IPv6
	}
	out := &flowpb.IP{IpVersion: v}
	if src.IsValid() { // a socket translation of an unbound socket has none
		out.Source = src.String()
	}
	if dst.IsValid() {
		out.Destination = dst.String()
	}
	return out
}

func layer4(f flows.Flow) *flowpb.Layer4 {
	sp, dp := uint32(f.Src.Port()), uint32(f.Dst.Port())
	switch f.Protocol {
	case datapath.TCP:
		tcp := &flowpb.TCP{SourcePort: sp, DestinationPort: dp}
		if kind(f) != flows.KindSockTranslate { // a socket's, not a packet's: no flags
			tcp.Flags = tcpFlagsOf(f.TCPFlags)
		}
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: tcp}}
	case datapath.UDP:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: sp, DestinationPort: dp}}}
	case datapath.SCTP:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_SCTP{SCTP: &flowpb.SCTP{SourcePort: sp, DestinationPort: dp}}}
	case 1:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv4{ICMPv4: &flowpb.ICMPv4{}}}
	case 58:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv6{ICMPv6: &flowpb.ICMPv6{}}}
	}
	return nil
}

// reservedNames are the labels of Cilium's reserved identities.
var reservedNames = map[uint32]string{
	wire.IdentityHost: "host", wire.IdentityWorld: "world", 3: "unmanaged", 4: "health", 5: "init",
	wire.IdentityRemoteNode: "remote-node", 7: "kube-apiserver", 8: "ingress", 9: "world-ipv4", 10: "world-ipv6",
}

func (x *enricher) endpoint(addr netip.Addr, id uint32, cluster uint16) *flowpb.Endpoint {
	ep := &flowpb.Endpoint{Identity: id}
	if name, ok := reservedNames[id]; ok {
		ep.Labels = []string{"reserved:" + name}
	}
	var ls wire.Labels
	if x.e == nil {
		return ep
	}
	if l, ok := x.e.Identity(id); ok {
		ls = l
		ep.Labels = x.formatted(id, l)
	}
	ep.ClusterName = x.e.ClusterName(cluster)
	if addr.IsValid() {
		if p, ok := x.e.Pod(addr.Unmap(), cluster); ok {
			ep.Namespace, ep.PodName = p.Namespace, p.Name
			if ep.ClusterName == "" {
				ep.ClusterName = p.Cluster
			}
			if p.Workload.Name != "" {
				ep.Workloads = []*flowpb.Workload{{Kind: p.Workload.Kind, Name: p.Workload.Name}}
			}
		}
	}
	if ep.ClusterName == "" && cluster != 0 {
		// A cluster the enricher cannot name: its identity's cluster label
		// (validated against the cluster it came from), else its id.
		if name, ok := ls.Get(wire.ClusterLabel); ok {
			ep.ClusterName = name
		} else {
			ep.ClusterName = "cluster-" + strconv.Itoa(int(cluster))
		}
	}
	if ep.Namespace == "" {
		ep.Namespace, _ = ls.Get(wire.NamespaceLabel)
	}
	return ep
}

// dnsNames are the DNS names of addr when its identity is the world's or
// node-local (1<<24 and above: CIDR and FQDN identities), else nil.
func (x *enricher) dnsNames(addr netip.Addr, id uint32) []string {
	n, ok := x.e.(DNSNamer)
	if !ok || !addr.IsValid() || (id != wire.IdentityWorld && id < 1<<24) {
		return nil
	}
	return n.DNSNames(addr.Unmap())
}

// formatted returns the identity's labels as Hubble writes them
// ("source:key=value", "source:key" without a value), sorted; cached per
// identity while its labels stay the same.
func (x *enricher) formatted(id uint32, ls wire.Labels) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	if c, ok := x.labels[id]; ok && slices.Equal(c.src, ls) {
		return c.out
	}
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.Source + ":" + l.Key
		if l.Value != "" {
			out[i] += "=" + l.Value
		}
	}
	slices.Sort(out)
	if len(x.labels) >= maxCachedIdentities {
		clear(x.labels)
	}
	x.labels[id] = cachedLabels{src: ls, out: out}
	return out
}

// summary is Hubble's Summary line of an L3/L4 flow.
func summary(f *flowpb.Flow) string {
	switch l4 := f.GetL4().GetProtocol().(type) {
	case *flowpb.Layer4_TCP:
		if l4.TCP.GetFlags() == nil {
			return "TCP"
		}
		return "TCP Flags: " + tcpFlags(l4.TCP.GetFlags())
	case *flowpb.Layer4_UDP:
		return "UDP"
	case *flowpb.Layer4_SCTP:
		return "SCTP"
	case *flowpb.Layer4_ICMPv4:
		return "ICMPv4"
	case *flowpb.Layer4_ICMPv6:
		return "ICMPv6"
	}
	return ""
}

// tcpFlags writes the set flags the way Hubble does ("SYN, ACK").
func tcpFlags(f *flowpb.TCPFlags) string {
	if f == nil {
		return ""
	}
	var s []byte
	add := func(on bool, name string) {
		if !on {
			return
		}
		if len(s) > 0 {
			s = append(s, ", "...)
		}
		s = append(s, name...)
	}
	add(f.SYN, "SYN")
	add(f.ACK, "ACK")
	add(f.RST, "RST")
	add(f.FIN, "FIN")
	add(f.PSH, "PSH")
	add(f.URG, "URG")
	add(f.ECE, "ECE")
	add(f.CWR, "CWR")
	add(f.NS, "NS")
	return string(s)
}
