package agentsync

import (
	"net/netip"
	"sync"
)

// PodName names a pod of a remote cluster (or of the local cluster, from
// its own apiserver) by address, from the ipcache entries the agent
// synced: their K8sNamespace and K8sPodName.
type PodName struct {
	ClusterID       uint16
	Namespace, Name string
}

// podNames indexes the pod names of every remote's single-address ipcache
// entries, for flows. It costs, per named entry, a map slot of the address
// and PodName (about 60 bytes with the map's overhead) and the pod name's
// bytes; namespaces are interned.
type podNames struct {
	mu  sync.RWMutex
	m   map[netip.Addr]PodName // guarded by mu
	nss map[string]string      // guarded by mu; interned namespaces
}

func newPodNames() *podNames {
	return &podNames{m: map[netip.Addr]PodName{}, nss: map[string]string{}}
}

// set names the pod at the prefix's address; a prefix that is not a
// single address, or an entry without a pod name, removes the name.
func (p *podNames) set(pfx netip.Prefix, cluster uint16, namespace, name string) {
	if !pfx.IsSingleIP() {
		return
	}
	addr := pfx.Addr().Unmap()
	p.mu.Lock()
	defer p.mu.Unlock()
	if name == "" {
		p.deleteLocked(addr, cluster)
		return
	}
	ns, ok := p.nss[namespace]
	if !ok {
		p.nss[namespace], ns = namespace, namespace
	}
	p.m[addr] = PodName{ClusterID: cluster, Namespace: ns, Name: name}
}

// remove forgets the prefix's name if cluster set it.
func (p *podNames) remove(pfx netip.Prefix, cluster uint16) {
	if !pfx.IsSingleIP() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deleteLocked(pfx.Addr().Unmap(), cluster)
}

func (p *podNames) deleteLocked(addr netip.Addr, cluster uint16) {
	if cur, ok := p.m[addr]; ok && cur.ClusterID == cluster {
		delete(p.m, addr)
	}
}

// dropCluster forgets every name cluster set.
func (p *podNames) dropCluster(cluster uint16) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, n := range p.m {
		if n.ClusterID == cluster {
			delete(p.m, a)
		}
	}
}

func (p *podNames) get(addr netip.Addr) (PodName, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	n, ok := p.m[addr.Unmap()]
	return n, ok
}

// PodByIP names the pod of the mesh at addr, as its cluster's ipcache
// entry named it. Safe for concurrent use; for flows.
func (a *Agent) PodByIP(addr netip.Addr) (PodName, bool) { return a.pods.get(addr) }
