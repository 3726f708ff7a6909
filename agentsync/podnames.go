package agentsync

import (
	"net/netip"

	"github.com/clustermesh/clustermesh/wire"
)

// PodName names a pod of a remote cluster (or of the local cluster, from
// its own apiserver) by address, from the ipcache entries the agent
// synced: their K8sNamespace and K8sPodName.
type PodName struct {
	Namespace, Name string
}

// podRef is a pod's name in a nameArena: the namespace's index (16 bits),
// the name's offset (32 bits) and length (16 bits) in the arena's bytes.
// 0 is no name. A name is kept with its ipcache entry, so it costs the
// entry 8 bytes of value and the name's bytes, nothing more: this is per
// entry, the bulk of an agent's memory.
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
	maxNameLen    = 1<<16 - 1
	maxArenaBytes = 1<<32 - 1
	maxNamespaces = 1<<16 - 1
)

// add stores a name and returns its reference; 0 when it cannot be kept
// (empty, too long, the arena or the namespaces full): the pod then goes
// unnamed in flows, nothing else changes.
func (a *nameArena) add(namespace, name string) podRef {
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
	return podRef(uint64(ns)<<48 | uint64(off)<<16 | uint64(len(name)))
}

func (r podRef) parts() (ns uint16, off, n int) {
	return uint16(r >> 48), int(r>>16) & maxArenaBytes, int(r & maxNameLen)
}

// get returns the name of r.
func (a *nameArena) get(r podRef) (PodName, bool) {
	if r == 0 {
		return PodName{}, false
	}
	ns, off, n := r.parts()
	return PodName{Namespace: a.nss[ns], Name: string(a.buf[off : off+n])}, true
}

// free marks r's bytes as garbage.
func (a *nameArena) free(r podRef) {
	if r != 0 {
		_, _, n := r.parts()
		a.garbage += n
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
