package agentsync

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"sync"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// svcName is a service's namespace/name.
type svcName struct{ Namespace, Name string }

func (n svcName) String() string { return n.Namespace + "/" + n.Name }

// remoteService is what one remote cluster says of a global service: its
// backends per port name. Immutable once stored.
type remoteService struct {
	clusterID uint16
	backends  map[string][]datapath.Backend // port name → backends (protocol and port set)
}

// ipClaim is one cluster's ipcache entry for a prefix.
type ipClaim struct {
	clusterID uint16
	entry     datapath.IPCacheEntry
}

// merger holds the desired datapath state — the local cluster's global
// services merged with every remote's backends, and every remote's ipcache —
// and writes each change into the datapath as an idempotent update or delete.
// What it wrote is remembered, so a recomputation that changes nothing writes
// nothing.
type merger struct {
	dp        datapath.Writer
	localName string
	localID   uint16
	log       *slog.Logger

	mu         sync.Mutex
	local      *statesource.State                    // guarded by mu; nil until the source delivered
	localSvcs  map[svcName]*statesource.Service      // guarded by mu; global services of local
	remoteSvcs map[svcName]map[string]*remoteService // guarded by mu; service → cluster → backends
	ipClaims   map[netip.Prefix]map[string]ipClaim   // guarded by mu; prefix → cluster → claim
	localNet   []netip.Prefix                        // guarded by mu; local pod CIDRs and node IPs

	writtenSvc map[svcName]map[datapath.Frontend][]datapath.Backend // guarded by mu
	writtenIP  map[netip.Prefix]datapath.IPCacheEntry               // guarded by mu
	failedSvc  map[svcName]bool                                     // guarded by mu; to rewrite on retry
	failedIP   map[netip.Prefix]bool                                // guarded by mu; to rewrite on retry
	writeErrs  uint64                                               // guarded by mu
	lastErr    string                                               // guarded by mu
}

func newMerger(dp datapath.Writer, localName string, localID uint16, log *slog.Logger) *merger {
	return &merger{
		dp: dp, localName: localName, localID: localID, log: log,
		localSvcs:  map[svcName]*statesource.Service{},
		remoteSvcs: map[svcName]map[string]*remoteService{},
		ipClaims:   map[netip.Prefix]map[string]ipClaim{},
		writtenSvc: map[svcName]map[datapath.Frontend][]datapath.Backend{},
		writtenIP:  map[netip.Prefix]datapath.IPCacheEntry{},
		failedSvc:  map[svcName]bool{},
		failedIP:   map[netip.Prefix]bool{},
	}
}

// setLocal replaces the local cluster's state and rewrites every service
// whose desired backends changed.
func (m *merger) setLocal(st *statesource.State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	touched := map[svcName]bool{}
	for n := range m.localSvcs {
		touched[n] = true
	}
	m.local = st
	m.localNet = m.localNet[:0]
	for _, n := range st.Nodes {
		m.localNet = append(m.localNet, n.PodCIDRs...)
		for _, ip := range n.IPs {
			m.localNet = append(m.localNet, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
		}
	}
	m.localSvcs = map[svcName]*statesource.Service{}
	for i := range st.Services {
		s := &st.Services[i]
		if s.Global() {
			n := svcName{s.Namespace, s.Name}
			m.localSvcs[n] = s
			touched[n] = true
		}
	}
	for n := range touched {
		m.syncService(n)
	}
}

// setRemoteService records cluster's view of a service (nil deletes it).
func (m *merger) setRemoteService(cluster string, n svcName, rs *remoteService) {
	m.mu.Lock()
	defer m.mu.Unlock()
	byCluster := m.remoteSvcs[n]
	if rs == nil {
		if _, ok := byCluster[cluster]; !ok {
			return
		}
		delete(byCluster, cluster)
		if len(byCluster) == 0 {
			delete(m.remoteSvcs, n)
		}
	} else {
		if byCluster == nil {
			byCluster = map[string]*remoteService{}
			m.remoteSvcs[n] = byCluster
		}
		byCluster[cluster] = rs
	}
	m.syncService(n)
}

// overlapsLocal reports whether p overlaps a local pod CIDR or node IP: a
// remote may never claim the local cluster's addresses.
func (m *merger) overlapsLocal(p netip.Prefix) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.localNet {
		if l.Overlaps(p) {
			return true
		}
	}
	return false
}

// setIP records cluster's claim on a prefix (nil deletes it).
func (m *merger) setIP(cluster string, p netip.Prefix, c *ipClaim) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.setIPLocked(cluster, p, c)
}

func (m *merger) setIPLocked(cluster string, p netip.Prefix, c *ipClaim) {
	claims := m.ipClaims[p]
	if c == nil {
		if _, ok := claims[cluster]; !ok {
			return
		}
		delete(claims, cluster)
		if len(claims) == 0 {
			delete(m.ipClaims, p)
		}
	} else {
		if claims == nil {
			claims = make(map[string]ipClaim, 1)
			m.ipClaims[p] = claims
		}
		claims[cluster] = *c
	}
	m.syncIP(p)
}

// dropCluster removes everything cluster contributed (an explicit
// disconnect, or a drain before re-admission).
func (m *merger) dropCluster(cluster string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n, byCluster := range m.remoteSvcs {
		if _, ok := byCluster[cluster]; ok {
			delete(byCluster, cluster)
			if len(byCluster) == 0 {
				delete(m.remoteSvcs, n)
			}
			m.syncService(n)
		}
	}
	for p, claims := range m.ipClaims {
		if _, ok := claims[cluster]; ok {
			m.setIPLocked(cluster, p, nil)
		}
	}
}

// syncIP writes the desired entry of p: the claim of the cluster with the
// lowest id (a deterministic winner when two clusters claim one address).
func (m *merger) syncIP(p netip.Prefix) {
	var winner *ipClaim
	for _, c := range m.ipClaims[p] {
		if winner == nil || c.clusterID < winner.clusterID {
			winner = &c
		}
	}
	var want *datapath.IPCacheEntry
	if winner != nil {
		want = &winner.entry
	}
	have, written := m.writtenIP[p]
	ok := true
	switch {
	case want == nil && written:
		if ok = m.check(m.dp.DeleteIPCache(p), "delete ipcache", p); ok {
			delete(m.writtenIP, p)
		}
	case want != nil && (!written || have != *want):
		if ok = m.check(m.dp.UpsertIPCache(p, *want), "update ipcache", p); ok {
			m.writtenIP[p] = *want
		}
	}
	if ok {
		delete(m.failedIP, p)
	} else {
		m.failedIP[p] = true
	}
}

// syncService writes the desired frontends of service n and deletes the ones
// it no longer has.
func (m *merger) syncService(n svcName) {
	want := m.desiredFrontends(n)
	have := m.writtenSvc[n]
	failed := false
	for fe, bes := range want {
		if old, ok := have[fe]; ok && slices.Equal(old, bes) {
			continue
		}
		if !m.check(m.dp.UpsertService(fe, bes), "update service", fe) {
			failed = true
			continue
		}
		if have == nil {
			have = map[datapath.Frontend][]datapath.Backend{}
			m.writtenSvc[n] = have
		}
		have[fe] = bes
	}
	for fe := range have {
		if _, ok := want[fe]; ok {
			continue
		}
		if m.check(m.dp.DeleteService(fe), "delete service", fe) {
			delete(have, fe)
		} else {
			failed = true
		}
	}
	if len(have) == 0 {
		delete(m.writtenSvc, n)
	}
	if failed {
		m.failedSvc[n] = true
	} else {
		delete(m.failedSvc, n)
	}
}

// desiredFrontends computes, for each port of the local global service n,
// the backends its affinity selects. A service that exists only remotely is
// not served.
func (m *merger) desiredFrontends(n svcName) map[datapath.Frontend][]datapath.Backend {
	ls := m.localSvcs[n]
	if ls == nil || !ls.ClusterIP.IsValid() {
		return nil
	}
	out := map[datapath.Frontend][]datapath.Backend{}
	for _, v := range m.portViews(ls) {
		out[v.frontend] = v.selected
	}
	return out
}

// portView is one port of a global service with its candidate and selected
// backends.
type portView struct {
	frontend     datapath.Frontend
	local        []datapath.Backend            // healthy local backends
	localTotal   int                           // local backends, healthy or not
	remote       map[string][]datapath.Backend // cluster → backends
	selected     []datapath.Backend
	selectedFrom string // "local", "remote", "local+remote" or "none"
}

func (m *merger) portViews(ls *statesource.Service) []portView {
	n := svcName{ls.Namespace, ls.Name}
	var views []portView
	for _, p := range ls.Ports {
		proto, err := datapath.ParseProtocol(p.Proto())
		if err != nil {
			continue
		}
		// Unmapped, as the datapath stores them: the keys of writtenSvc must
		// be the datapath's keys, or prune would delete a live frontend.
		v := portView{frontend: datapath.Frontend{Addr: ls.ClusterIP.Unmap(), Port: p.Port, Protocol: proto}, remote: map[string][]datapath.Backend{}}
		for _, e := range m.local.Backends(ls) {
			v.localTotal++
			if e.IsReady() {
				v.local = append(v.local, datapath.Backend{Addr: e.IP.Unmap(), Port: p.Target(), Protocol: proto, ClusterID: m.localID})
			}
		}
		for cluster, rs := range m.remoteSvcs[n] {
			for _, b := range rs.backends[p.Name] {
				if b.Protocol == proto {
					v.remote[cluster] = append(v.remote[cluster], b)
				}
			}
		}
		v.selected, v.selectedFrom = selectBackends(ls.Affinity(), v.local, v.remote)
		views = append(views, v)
	}
	return views
}

// selectBackends applies a global service's affinity: local uses the healthy
// local backends while there is one and fails over to the remote ones;
// remote is the mirror image; none uses all. The result is sorted so that
// the same inputs always give the same slots.
func selectBackends(affinity string, local []datapath.Backend, remote map[string][]datapath.Backend) ([]datapath.Backend, string) {
	var all []datapath.Backend
	for _, bs := range remote {
		all = append(all, bs...)
	}
	var sel []datapath.Backend
	from := "none"
	switch {
	case affinity == wire.AffinityLocal && len(local) > 0:
		sel, from = slices.Clone(local), "local"
	case affinity == wire.AffinityLocal && len(all) > 0:
		sel, from = all, "remote"
	case affinity == wire.AffinityRemote && len(all) > 0:
		sel, from = all, "remote"
	case affinity == wire.AffinityRemote && len(local) > 0:
		sel, from = slices.Clone(local), "local"
	default:
		sel = append(slices.Clone(local), all...)
		switch {
		case len(local) > 0 && len(all) > 0:
			from = "local+remote"
		case len(local) > 0:
			from = "local"
		case len(all) > 0:
			from = "remote"
		}
	}
	sort.Slice(sel, func(i, j int) bool { return backendLess(sel[i], sel[j]) })
	return sel, from
}

func backendLess(a, b datapath.Backend) bool {
	if a.ClusterID != b.ClusterID {
		return a.ClusterID < b.ClusterID
	}
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c < 0
	}
	if a.Port != b.Port {
		return a.Port < b.Port
	}
	return a.Protocol < b.Protocol
}

// retryFailed rewrites every service and prefix whose last write failed, so
// the datapath does not drift from the desired state after a transient
// error. It reports how many are still failing.
func (m *merger) retryFailed() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n := range m.failedSvc {
		m.syncService(n)
	}
	for p := range m.failedIP {
		m.syncIP(p)
	}
	return len(m.failedSvc) + len(m.failedIP)
}

// writeErrors returns the number of failed writes and the last error.
func (m *merger) writeErrors() (uint64, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.writeErrs, m.lastErr
}

// check logs and counts a failed datapath write; it reports success.
func (m *merger) check(err error, op string, what any) bool {
	if err == nil {
		return true
	}
	m.writeErrs++
	m.lastErr = err.Error()
	m.log.Error("datapath write failed", "op", op, "target", what, "err", err)
	return false
}

// prune deletes from the datapath every entry the merged state does not
// hold: what a previous run left behind for a source that is gone. Called
// only after the first full sync, so nothing still valid is ever removed.
func (m *merger) prune(dp datapath.Datapath) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ips, err := dp.IPCache()
	if err != nil {
		return fmt.Errorf("agentsync: prune: %w", err)
	}
	ipN := 0
	for p := range ips {
		if _, ok := m.writtenIP[p]; !ok && m.check(dp.DeleteIPCache(p), "prune ipcache", p) {
			ipN++
		}
	}
	svcs, err := dp.Services()
	if err != nil {
		return fmt.Errorf("agentsync: prune: %w", err)
	}
	want := map[datapath.Frontend]bool{}
	for _, fes := range m.writtenSvc {
		for fe := range fes {
			want[fe] = true
		}
	}
	svcN := 0
	for fe := range svcs {
		if !want[fe] && m.check(dp.DeleteService(fe), "prune service", fe) {
			svcN++
		}
	}
	m.log.Info("pruned entries nobody claims after the initial sync", "ipcache", ipN, "services", svcN)
	return nil
}
