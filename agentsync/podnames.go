package agentsync

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/clustermesh/clustermesh/wire"
)

// PodName names a pod of a remote cluster (or of the local cluster, from
// its own apiserver) by address, from the ipcache entries the agent
// synced: their K8sNamespace and K8sPodName.
type PodName struct {
	Namespace, Name string
	// Workload is the pod's owning workload, when its entry named one
	// whose name begins the pod's (as Kubernetes names the pods of
	// Deployments, StatefulSets, DaemonSets and Jobs).
	Workload wire.Workload
}

// podRef is a pod's name in a nameArena, packed in 64 bits: the
// namespace's index (14 bits), the name's offset (31 bits) and length (8
// bits) in the arena's bytes, the workload's kind (3 bits, an index of
// wire.WorkloadKinds + 1) and the length of the pod name's prefix that is
// the workload's name (8 bits). 0 is no name. A name is kept with its
// ipcache entry, so it costs the entry 8 bytes of value and the name's
// bytes, nothing more: this is per entry, the bulk of an agent's memory.
type podRef uint64

// nameArena keeps the pod names of one remote's ipcache: names in one
// byte slice, namespaces interned. A removed name leaves garbage that a
// compaction (rebuild) reclaims.
type nameArena struct {
	buf     []byte
	garbage int
	nss     []string          // index 0 unused: podRef 0 is no name
	nsIdx   map[string]uint16 // namespace → index in nss
}

// Bounds of a podRef's fields.
const (
	maxNameLen    = 1<<8 - 1 // pod names are DNS subdomains, at most 253
	maxArenaBytes = 1<<31 - 1
	maxNamespaces = 1<<14 - 1
)

// add stores a name and returns its reference; 0 when it cannot be kept
// (empty, too long, the arena or the namespaces full): the pod then goes
// unnamed in flows, nothing else changes. A workload whose name does not
// begin the pod's is left out.
func (a *nameArena) add(namespace, name string, w wire.Workload) podRef {
	if name == "" || len(name) > maxNameLen || len(a.buf)+len(name) > maxArenaBytes {
		return 0
	}
	if a.nsIdx == nil {
		a.nsIdx, a.nss = map[string]uint16{}, []string{""}
	}
	ns, ok := a.nsIdx[namespace]
	if !ok {
		if len(a.nss) > maxNamespaces {
			return 0
		}
		ns = uint16(len(a.nss))
		a.nss = append(a.nss, namespace)
		a.nsIdx[namespace] = ns
	}
	off := len(a.buf)
	a.buf = append(a.buf, name...)
	kind, wlen := workloadBits(name, w)
	return podRef(uint64(ns)<<50 | uint64(off)<<19 | uint64(len(name))<<11 | kind<<8 | wlen)
}

// workloadBits packs w as a kind index and a prefix length of name; 0, 0
// when w is none or its name does not begin name.
func workloadBits(name string, w wire.Workload) (kind, wlen uint64) {
	if w.Name == "" || !strings.HasPrefix(name, w.Name) {
		return 0, 0
	}
	i := slices.Index(wire.WorkloadKinds, w.Kind)
	if i < 0 || i >= 7 {
		return 0, 0
	}
	return uint64(i + 1), uint64(len(w.Name))
}

func (r podRef) parts() (ns uint16, off, n, kind, wlen int) {
	return uint16(r >> 50), int(r>>19) & maxArenaBytes, int(r>>11) & maxNameLen, int(r>>8) & 7, int(r & 0xff)
}

// get returns the name of r.
func (a *nameArena) get(r podRef) (PodName, bool) {
	if r == 0 {
		return PodName{}, false
	}
	ns, off, n, kind, wlen := r.parts()
	p := PodName{Namespace: a.nss[ns], Name: string(a.buf[off : off+n])}
	if kind > 0 {
		p.Workload = wire.Workload{Kind: wire.WorkloadKinds[kind-1], Name: p.Name[:wlen]}
	}
	return p, true
}

// free marks r's bytes as garbage.
func (a *nameArena) free(r podRef) {
	if r != 0 {
		_, _, n, _, _ := r.parts()
		a.garbage += n
	}
}

// trim drops the slack of the arena's bytes (append doubles them: up to
// half of them unused), once a list is complete.
func (a *nameArena) trim() {
	if cap(a.buf)-len(a.buf) > len(a.buf)/8 {
		a.buf = slices.Clone(a.buf)
	}
}

// wasteful: most of the arena is garbage, worth a compaction.
func (a *nameArena) wasteful() bool {
	return a.garbage > 64<<10 && a.garbage > len(a.buf)/2
}

// PodByIP names the pod at addr in cluster (a cluster id of the flow's
// end, as the datapath's ipcache says), as that cluster's ipcache entry
// named it. Safe for concurrent use; for flows.
func (a *Agent) PodByIP(addr netip.Addr, cluster uint16) (PodName, bool) {
	r := a.remoteOf(cluster)
	if r == nil {
		return PodName{}, false
	}
	ks := r.kinds[wire.IPCache]
	if ks == nil {
		return PodName{}, false
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	s, ok := ks.store.(*ipcacheStore)
	if !ok {
		return PodName{}, false
	}
	return s.podName(addr)
}

// remoteOf is the remote whose cluster id is id: the one that reserved
// it, or the local cluster's own apiserver for the local id.
func (a *Agent) remoteOf(id uint16) *remote {
	a.mu.Lock()
	defer a.mu.Unlock()
	if uint32(id) == a.cfg.ClusterID {
		for _, r := range a.remotes {
			if r.self {
				return r
			}
		}
		return nil
	}
	return a.remotes[a.reserved[uint32(id)]]
}
