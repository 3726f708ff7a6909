package flowmap

import (
	"strconv"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"

	"github.com/clustermesh/clustermesh/flowl4"
)

// The kinds of a map's nodes.
const (
	// KindWorkload is the pods of one workload (Deployment, StatefulSet,
	// ...) of a cluster's namespace.
	KindWorkload = "workload"
	// KindPod is a pod without a known workload.
	KindPod = "pod"
	// KindWorld is every address outside the mesh (Cilium's world
	// identities), one node for the whole mesh.
	KindWorld = "world"
	// KindRemoteNode is the nodes of other clusters seen from a cluster
	// (Cilium's remote-node identity).
	KindRemoteNode = "remote-node"
	// KindHost is a node's own host namespace.
	KindHost = "host"
	// KindReserved is another of Cilium's reserved identities
	// (kube-apiserver, health, ingress, ...).
	KindReserved = "reserved"
	// KindIP is an address with no pod and no reserved identity.
	KindIP = "ip"
)

// nodeKey names a node without allocating: its strings are the flow's.
type nodeKey struct{ kind, cluster, namespace, name string }

func (k nodeKey) isPod() bool { return k.kind == KindWorkload || k.kind == KindPod }

// id is the node's ID: cluster/namespace/name for pods and workloads,
// "world", cluster/remote-node, cluster/host, cluster/reserved:NAME,
// cluster/IP (without the cluster when unknown).
func (k nodeKey) id() string {
	switch k.kind {
	case KindWorkload, KindPod:
		return k.cluster + "/" + k.namespace + "/" + k.name
	case KindWorld:
		return "world"
	}
	name := k.name
	if k.kind == KindReserved {
		name = "reserved:" + name
	}
	if k.cluster == "" {
		return name
	}
	return k.cluster + "/" + name
}

// edgeKey is an edge: its ends, the destination port and protocol, and an
// L7 label (HTTP method and path, DNS query) when the flow has one.
type edgeKey struct {
	src, dst nodeKey
	port     uint32
	proto    string
	l7       string
}

// id is the edge's ID: "SRC -> DST PORT/PROTO[ L7]".
func (k edgeKey) id(src, dst string) string {
	var b strings.Builder
	b.WriteString(src)
	b.WriteString(" -> ")
	b.WriteString(dst)
	b.WriteByte(' ')
	b.WriteString(strconv.FormatUint(uint64(k.port), 10))
	b.WriteByte('/')
	b.WriteString(k.proto)
	if k.l7 != "" {
		b.WriteByte(' ')
		b.WriteString(k.l7)
	}
	return b.String()
}

// keyOf is the edge of f, from the client to the server: a reply's ends
// are swapped. ok is false when an end has nothing to name it by.
func keyOf(f *flowpb.Flow) (k edgeKey, ok bool) {
	src, sok := endpointKey(f.GetSource(), f.GetIP().GetSource())
	dst, dok := endpointKey(f.GetDestination(), f.GetIP().GetDestination())
	if !sok || !dok {
		return edgeKey{}, false
	}
	srcPort, dstPort, proto := flowl4.Of(f.GetL4())
	if f.GetIsReply().GetValue() {
		src, dst, dstPort = dst, src, srcPort
	}
	k = edgeKey{src: src, dst: dst, port: dstPort, proto: proto}
	if l7 := f.GetL7(); l7 != nil {
		k.proto, k.l7 = l7Of(l7, k.proto)
	}
	return k, true
}

// endpointKey names an end: its pod's workload (or the pod), its reserved
// identity, or its address.
func endpointKey(ep *flowpb.Endpoint, ip string) (nodeKey, bool) {
	if ep.GetPodName() != "" {
		if w := ep.GetWorkloads(); len(w) > 0 && w[0].GetName() != "" {
			return nodeKey{kind: KindWorkload, cluster: ep.GetClusterName(), namespace: ep.GetNamespace(), name: w[0].GetName()}, true
		}
		return nodeKey{kind: KindPod, cluster: ep.GetClusterName(), namespace: ep.GetNamespace(), name: ep.GetPodName()}, true
	}
	for _, l := range ep.GetLabels() {
		name, ok := strings.CutPrefix(l, "reserved:")
		if !ok {
			continue
		}
		switch name {
		case "world", "world-ipv4", "world-ipv6":
			return nodeKey{kind: KindWorld, name: "world"}, true
		case "remote-node":
			return nodeKey{kind: KindRemoteNode, cluster: ep.GetClusterName(), name: "remote-node"}, true
		case "host":
			return nodeKey{kind: KindHost, cluster: ep.GetClusterName(), name: "host"}, true
		}
		return nodeKey{kind: KindReserved, cluster: ep.GetClusterName(), name: name}, true
	}
	if ip != "" {
		return nodeKey{kind: KindIP, cluster: ep.GetClusterName(), name: ip}, true
	}
	return nodeKey{}, false
}

// l7Of labels an L7 flow: HTTP's method and path (no query), DNS's query.
func l7Of(l7 *flowpb.Layer7, l4 string) (proto, label string) {
	switch r := l7.GetRecord().(type) {
	case *flowpb.Layer7_Http:
		path := r.Http.GetUrl()
		if i := strings.IndexAny(path, "?#"); i >= 0 {
			path = path[:i]
		}
		if u, ok := strings.CutPrefix(path, "http://"); ok {
			path = u[strings.IndexByte(u+"/", '/'):]
		}
		return "HTTP", strings.TrimSpace(r.Http.GetMethod() + " " + path)
	case *flowpb.Layer7_Dns:
		return "DNS", r.Dns.GetQuery()
	}
	return l4, ""
}

// node is a map's node.
type node struct {
	key nodeKey
	id  string
}

// bucketCounts are an edge's flows of one slice of the window, by verdict.
type bucketCounts struct {
	epoch int64
	n     [numVerdicts]uint32
}

// edge is a map's edge.
type edge struct {
	key      edgeKey
	id       string
	src, dst *node
	service  string // the destination service, namespace/name
	counts   []bucketCounts
	last     time.Time
	lastDrop time.Time
	recent   []*flowpb.Flow // a ring of the last flows
	next     int
}

func (e *edge) add(f *flowpb.Flow, t time.Time, epoch int64, keep int) {
	n := int64(len(e.counts))
	b := &e.counts[int((epoch%n+n)%n)] // a time before 1970 has a negative epoch
	if b.epoch != epoch {
		*b = bucketCounts{epoch: epoch}
	}
	v := int(f.GetVerdict())
	if v < 0 || v >= numVerdicts {
		v = 0
	}
	b.n[v]++
	if t.After(e.last) {
		e.last = t
	}
	if f.GetVerdict() == flowpb.Verdict_DROPPED && t.After(e.lastDrop) {
		e.lastDrop = t
	}
	if len(e.recent) < keep {
		e.recent = append(e.recent, f)
		return
	}
	e.recent[e.next] = f
	e.next = (e.next + 1) % keep
}

// sum adds the counts of the slices from epoch first on.
func (e *edge) sum(first, last int64) (n [numVerdicts]uint64) {
	for i := range e.counts {
		b := &e.counts[i]
		if b.epoch < first || b.epoch > last {
			continue
		}
		for v, c := range b.n {
			n[v] += uint64(c)
		}
	}
	return n
}

type svcKey struct{ namespace, name string }

// service is a global service: when each cluster last served it.
type service struct{ served map[string]time.Time }
