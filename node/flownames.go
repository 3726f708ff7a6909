package node

import (
	"context"
	"net/netip"
	"strings"
	"sync"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/fqdn"
	"github.com/clustermesh/clustermesh/observe"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// flowNames names the ends of flows (observe.Enricher) from what the
// agent holds: identities and local pods from the enforcer, the mesh's
// pods from the synced ipcache entries, services from the local state.
type flowNames struct {
	cluster string // the local cluster's name
	enf     *enforcer.Enforcer
	sync    *agentsync.Agent
	local   *view // the local state, for services
	// fqdn is the L7 proxy's FQDN cache (nil without the proxy): the DNS
	// names of the world's and FQDN-selected addresses.
	fqdn *fqdn.Cache

	mu        sync.RWMutex
	frontends map[netip.AddrPort]serviceName // guarded by mu
	workloads map[netip.Addr]wire.Workload   // guarded by mu; the local pods'
}

type serviceName struct{ namespace, name string }

var (
	_ observe.Enricher = (*flowNames)(nil)
	_ observe.DNSNamer = (*flowNames)(nil)
)

// DNSNames are the names allowed DNS answers gave for a, as the FQDN cache
// holds them, without their trailing dot (as Hubble shows them).
func (f *flowNames) DNSNames(a netip.Addr) []string {
	if f.fqdn == nil {
		return nil
	}
	names := f.fqdn.NamesOf(a)
	for i := range names {
		names[i] = strings.TrimSuffix(names[i], ".")
	}
	if len(names) == 0 {
		return nil
	}
	return names
}

func (f *flowNames) Identity(id uint32) (wire.Labels, bool) { return f.enf.Identity(id) }

func (f *flowNames) ClusterName(id uint16) string { return f.sync.ClusterName(id) }

// Pod names a local pod from the local state, else a pod of the mesh from
// its cluster's ipcache entry.
func (f *flowNames) Pod(ip netip.Addr, cluster uint16) (observe.Pod, bool) {
	if ns, pod, ok := f.enf.Pod(ip); ok {
		f.mu.RLock()
		w := f.workloads[ip]
		f.mu.RUnlock()
		return observe.Pod{Cluster: f.cluster, Namespace: ns, Name: pod, Workload: observe.Workload(w)}, true
	}
	p, ok := f.sync.PodByIP(ip, cluster)
	if !ok {
		return observe.Pod{}, false
	}
	return observe.Pod{Cluster: f.sync.ClusterName(cluster), Namespace: p.Namespace, Name: p.Name, Workload: observe.Workload(p.Workload)}, true
}

// Service names the local service of a ClusterIP:port.
func (f *flowNames) Service(fe netip.AddrPort) (namespace, name string, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s, ok := f.frontends[netip.AddrPortFrom(fe.Addr().Unmap(), fe.Port())]
	return s.namespace, s.name, ok
}

// run keeps the service frontends and the pods' workloads of the local
// state until ctx is done.
func (f *flowNames) run(ctx context.Context) error {
	return f.local.Run(ctx, func(st *statesource.State) {
		wls := make(map[netip.Addr]wire.Workload)
		for _, e := range st.Endpoints {
			if w, err := wire.ParseWorkload(e.Workload); err == nil {
				wls[e.IP.Unmap()] = w
			}
		}
		fes := make(map[netip.AddrPort]serviceName)
		for _, s := range st.Services {
			if !s.ClusterIP.IsValid() {
				continue
			}
			for _, p := range s.Ports {
				fes[netip.AddrPortFrom(s.ClusterIP.Unmap(), p.Port)] = serviceName{s.Namespace, s.Name}
			}
		}
		f.mu.Lock()
		f.frontends, f.workloads = fes, wls
		f.mu.Unlock()
	})
}
