// Package merge decides what the datapath holds from every cluster's state:
// the local cluster's global services merged with each remote's backends
// under their affinity, every remote's ipcache entries within the address
// ranges its nodes own, the local nodes' addresses, and what a previous run
// left until its clusters have synced. It writes the result into the
// datapath as idempotent updates and deletes, a remote's service updates
// coalesced over a short window (coalesce.go). agentsync receives and
// validates remote state and hands it here.
package merge

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/loglimit"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// ServiceName is a service's namespace/name.
type ServiceName struct{ Namespace, Name string }

func (n ServiceName) String() string { return n.Namespace + "/" + n.Name }

// RemoteService is what one remote cluster says of a global service: its
// backends per port name. Immutable once stored.
type RemoteService struct {
	clusterID uint16
	backends  map[string][]datapath.Backend  // port name → backends (protocol and port set)
	topology  map[netip.Addr]BackendTopology // nil when the remote publishes none
}

// IPUpdate is a cluster's new claim on a prefix; a nil entry
// withdraws the cluster's claim.
type IPUpdate struct {
	Prefix netip.Prefix
	Entry  *datapath.IPCacheEntry
}

// ipState is the winning claim on a prefix (the lowest cluster id; its
// entry's ClusterID says whose) and whether the datapath holds it.
type ipState struct {
	claim   datapath.IPCacheEntry
	written bool
}

// Config of a Merger.
type Config struct {
	// Datapath is where the merged state is written.
	Datapath datapath.Writer
	// ClusterName and ClusterID are the local cluster's.
	ClusterName string
	ClusterID   uint16
	// NodeName is this node's name in the local state ("": local node
	// addresses stay out of the ipcache); see nodeips.go.
	NodeName string
	// RecheckFlows, when set, is called (once per batch of ipcache writes)
	// after an ipcache entry the datapath held changed identity or went
	// away: the policy programs cache verdicts with the peer identity.
	RecheckFlows func() error
	// TrustRemoteAddresses turns off the address ownership check
	// (ownership.go).
	TrustRemoteAddresses bool
	// OnServiceChange, when set, is told the name of every service whose
	// remote or local backends may have changed (RemoteBackends). It is
	// called with the merger's lock held: it must neither block nor call
	// the merger.
	OnServiceChange func(ServiceName)
	// CoalesceServices, when positive, folds the changes of a service
	// written less than this long ago into one write at the end of that
	// window (coalesce.go): the first change is written at once, every
	// change within one window. The owner then calls Close. Zero writes
	// every change at once.
	CoalesceServices time.Duration
	Logger           *slog.Logger
}

// DefaultCoalesceServices is the window an agent folds service changes
// into (Config.CoalesceServices): short against a person's reaction, long
// against a hundred clusters connecting at once.
const DefaultCoalesceServices = 100 * time.Millisecond

// Merger holds the desired datapath state — the local cluster's global
// services merged with every remote's backends, and every remote's ipcache —
// and writes each change into the datapath as an idempotent update or delete.
// What it wrote is remembered, so a recomputation that changes nothing writes
// nothing. Its methods may be called from any goroutine; each holds mu while
// it writes, so the lock order of a caller is: its own locks, then mu, then
// the datapath's.
type Merger struct {
	dp        datapath.Writer
	localName string
	localID   uint16
	log       *slog.Logger

	mu         sync.Mutex
	localIx    *statesource.SelectorIndex           // guarded by mu; index of the local endpoints (nil without global services)
	localSvcs  map[ServiceName]*statesource.Service // guarded by mu; global services of local
	remoteSvcs map[ServiceName]*serviceRemotes      // guarded by mu; service → cluster → backends (candidates.go)
	// ips holds the winning claim of every prefix; ipsMore the other
	// clusters' claims on the few prefixes claimed twice. Together they are
	// every remote's ipcache: keep them small, this is per entry.
	ips      ipTable                                  // guarded by mu (iptable.go)
	ipsMore  map[netip.Prefix][]datapath.IPCacheEntry // guarded by mu
	localNet []netip.Prefix                           // guarded by mu; local pod CIDRs and node IPs
	stale    map[string]bool                          // guarded by mu; remotes whose heartbeat is stale
	// own indexes the remote clusters' node ranges; held keeps, per
	// cluster id, the ipcache entries outside the ranges it owns, until it
	// owns them (ownership.go). Both guarded by mu.
	own  *ownership
	held map[uint16]map[netip.Prefix]datapath.IPCacheEntry
	// rangesGen and rangesGenOf count the changes of the node ranges, of
	// all clusters and per cluster id (admitGenLocked). Guarded by mu.
	rangesGen   uint64
	rangesGenOf map[uint16]uint64
	// co holds the service writes waiting for their window (coalesce.go).
	co coalescer
	// trustAddresses is Config.TrustRemoteAddresses.
	trustAddresses bool
	// nodeName is Config.NodeName; nodeClaims the node addresses claimed
	// (nodeips.go).
	nodeName   string
	nodeClaims map[netip.Prefix]datapath.IPCacheEntry // guarded by mu
	// recheckFlows is Config.RecheckFlows; recheck says a written entry
	// changed identity or went away since the last call (guarded by mu).
	recheckFlows func() error
	recheck      bool
	onChange     func(ServiceName) // Config.OnServiceChange

	writtenSvc map[ServiceName]map[datapath.Frontend][]datapath.Backend // guarded by mu
	// pinned holds the service entries a previous run left in the datapath,
	// until the first full sync (prune): a restarting agent keeps their
	// remote backends rather than serving a service without them.
	pinned map[datapath.Frontend][]datapath.Backend // guarded by mu
	// pinnedIPs holds the ipcache prefixes a previous run left, by cluster
	// id, until that cluster's first full sync (pruneCluster) or the prune
	// after every remote synced.
	pinnedIPs map[uint16][]netip.Prefix // guarded by mu
	failedSvc map[ServiceName]bool      // guarded by mu; to rewrite on retry
	failedIP  map[netip.Prefix]bool     // guarded by mu; to rewrite on retry
	writeErrs uint64                    // guarded by mu
	checkLog  *loglimit.Keyed           // guarded by mu; write-failure log limit per operation
	lastErr   string                    // guarded by mu
}

// New returns a merger that writes into cfg.Datapath.
func New(cfg Config) *Merger {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Merger{
		dp: cfg.Datapath, localName: cfg.ClusterName, localID: cfg.ClusterID, log: cfg.Logger,
		nodeName: cfg.NodeName, recheckFlows: cfg.RecheckFlows, trustAddresses: cfg.TrustRemoteAddresses,
		onChange:    cfg.OnServiceChange,
		checkLog:    loglimit.New(logEvery),
		localSvcs:   map[ServiceName]*statesource.Service{},
		remoteSvcs:  map[ServiceName]*serviceRemotes{},
		ips:         newIPTable(),
		ipsMore:     map[netip.Prefix][]datapath.IPCacheEntry{},
		writtenSvc:  map[ServiceName]map[datapath.Frontend][]datapath.Backend{},
		failedSvc:   map[ServiceName]bool{},
		failedIP:    map[netip.Prefix]bool{},
		stale:       map[string]bool{},
		own:         newOwnership(),
		held:        map[uint16]map[netip.Prefix]datapath.IPCacheEntry{},
		rangesGenOf: map[uint16]uint64{},
		co: coalescer{window: cfg.CoalesceServices, written: map[ServiceName]time.Time{},
			dirty: map[ServiceName][]uint16{}},
	}
}

// setLocal replaces the local cluster's state and rewrites every service
// whose desired backends changed.
func (m *Merger) SetLocal(st *statesource.State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	touched := map[ServiceName]bool{}
	for n := range m.localSvcs {
		touched[n] = true
	}
	m.localNet = m.localNet[:0]
	for _, n := range st.Nodes {
		m.localNet = append(m.localNet, n.PodCIDRs...)
		for _, ip := range n.IPs {
			m.localNet = append(m.localNet, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
		}
	}
	m.localSvcs = map[ServiceName]*statesource.Service{}
	for i := range st.Services {
		s := &st.Services[i]
		if s.Global() {
			n := ServiceName{s.Namespace, s.Name}
			m.localSvcs[n] = s
			touched[n] = true
		}
	}
	// The index of the endpoints' labels serves the global services alone
	// (portViews): not built, over every endpoint, for a cluster with none.
	m.localIx = nil
	if len(m.localSvcs) > 0 {
		m.localIx = statesource.NewSelectorIndex(st)
	}
	for n := range touched {
		m.syncService(n)
	}
	m.writeIPs(m.claimLocalNodesLocked(st))
}

// setRemoteService records cluster's view of a service (nil deletes it).
func (m *Merger) SetRemoteService(cluster string, n ServiceName, rs *RemoteService) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sr := m.remoteSvcs[n]
	if sr == nil {
		if rs == nil {
			return
		}
		sr = &serviceRemotes{byCluster: map[string]*remoteEntry{}}
		m.remoteSvcs[n] = sr
	}
	var id uint16 // whose change it is
	if rs != nil {
		id = rs.clusterID
	} else if e := sr.byCluster[cluster]; e != nil {
		id = e.rs.clusterID
	}
	if !sr.set(cluster, rs) {
		return
	}
	if len(sr.byCluster) == 0 {
		delete(m.remoteSvcs, n)
	}
	m.serviceChangedLocked(n, id)
}

// overlapsLocal reports whether p overlaps a local pod CIDR or node IP: a
// remote may never claim the local cluster's addresses.
func (m *Merger) OverlapsLocal(p netip.Prefix) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.localNet {
		if l.Overlaps(p) {
			return true
		}
	}
	return false
}

// setIPs applies claims of cluster id on prefixes and writes the resulting
// winners, in one datapath batch where the datapath supports it. A claim
// outside the ranges the cluster owns is held, not applied (ownership.go).
func (m *Merger) SetIPs(id uint16, updates []IPUpdate) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ups []netip.Prefix
	for _, u := range updates {
		if u.Entry != nil && !m.admitsLocked(id, u.Prefix) {
			m.holdLocked(id, u.Prefix, *u.Entry)
			if m.claimIP(id, u.Prefix, nil) {
				ups = append(ups, u.Prefix)
			}
			continue
		}
		m.unheldLocked(id, u.Prefix)
		if m.claimIP(id, u.Prefix, u.Entry) {
			ups = append(ups, u.Prefix)
		}
	}
	m.writeIPs(ups)
}

// claimIP records id's claim on p (nil withdraws it) and reports whether the
// winner of p changed.
func (m *Merger) claimIP(id uint16, p netip.Prefix, e *datapath.IPCacheEntry) bool {
	cur, has := m.ips.get(p)
	if has && cur.written {
		defer func() {
			if now, ok := m.ips.get(p); !ok || now.claim.Identity != cur.claim.Identity {
				m.recheck = true
			}
		}()
	}
	more := m.ipsMore[p]
	if len(more) == 0 && (!has || cur.claim.ClusterID == id) {
		// The common case: id is the only claimant (no allocation).
		switch {
		case e == nil && !has:
			return false
		case e == nil:
			m.ips.del(p)
			return true
		case has && cur.claim == *e:
			return false
		}
		m.ips.set(p, ipState{claim: *e})
		return true
	}
	// Every claim but id's, then id's new one.
	claims := make([]datapath.IPCacheEntry, 0, len(more)+2)
	if has && cur.claim.ClusterID != id {
		claims = append(claims, cur.claim)
	}
	for _, c := range more {
		if c.ClusterID != id {
			claims = append(claims, c)
		}
	}
	if e != nil {
		claims = append(claims, *e)
	}
	if len(claims) == 0 {
		m.ips.del(p)
		delete(m.ipsMore, p)
		return has
	}
	win := 0
	for i, c := range claims {
		if c.ClusterID < claims[win].ClusterID {
			win = i
		}
	}
	winner := claims[win]
	claims = append(claims[:win], claims[win+1:]...)
	if len(claims) > 0 {
		m.ipsMore[p] = claims
	} else {
		delete(m.ipsMore, p)
	}
	if has && cur.claim == winner {
		return false
	}
	m.ips.set(p, ipState{claim: winner})
	return true
}

// writeIPs writes the winners of ps (deleting prefixes nobody claims).
func (m *Merger) writeIPs(ps []netip.Prefix) {
	defer m.recheckIfNeeded()
	var upP []netip.Prefix
	var upE []datapath.IPCacheEntry
	for _, p := range ps {
		st, ok := m.ips.get(p)
		if !ok {
			if m.check(m.dp.DeleteIPCache(p), "delete ipcache", p) {
				delete(m.failedIP, p)
			} else {
				m.failedIP[p] = true
			}
			continue
		}
		upP, upE = append(upP, p), append(upE, st.claim)
	}
	if len(upP) == 0 {
		return
	}
	if bw, ok := m.dp.(datapath.BatchWriter); ok && len(upP) > 1 {
		if m.check(bw.UpsertIPCacheBatch(upP, upE), "update ipcache batch", len(upP)) {
			for _, p := range upP {
				m.markIPWritten(p, true)
			}
			return
		}
		// Part of the batch may be in: write one by one to know which.
	}
	for i, p := range upP {
		m.markIPWritten(p, m.check(m.dp.UpsertIPCache(p, upE[i]), "update ipcache", p))
	}
}

func (m *Merger) markIPWritten(p netip.Prefix, ok bool) {
	if st, has := m.ips.get(p); has {
		st.written = ok
		m.ips.set(p, st)
	}
	if ok {
		delete(m.failedIP, p)
	} else {
		m.failedIP[p] = true
	}
}

// dropCluster removes everything cluster contributed (an explicit
// disconnect, or a drain before re-admission).
func (m *Merger) DropCluster(cluster string, id uint16) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropServicesLocked(cluster)
	if id == nodeClaimID {
		return // a remote never admitted: it claimed no address
	}
	defer m.pruneClusterLocked(id) // what a previous run left of it goes too
	changed := m.dropOwnershipLocked(id)
	for p, st := range m.ips.all() {
		if st.claim.ClusterID == id && m.claimIP(id, p, nil) {
			changed = append(changed, p)
		}
	}
	for p, more := range m.ipsMore {
		for _, c := range more {
			if c.ClusterID == id {
				m.claimIP(id, p, nil) // a losing claim: the winner stays
				break
			}
		}
	}
	m.writeIPs(changed)
}

// loadPinned remembers the services and ipcache entries a previous run
// left in the datapath.
func (m *Merger) LoadPinned(dp datapath.Reader) error {
	svcs, err := dp.Services()
	if err != nil {
		return fmt.Errorf("reading the previous run's services: %w", err)
	}
	ips, err := dp.IPCache()
	if err != nil {
		return fmt.Errorf("reading the previous run's ipcache: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pinned = svcs
	m.pinnedIPs = map[uint16][]netip.Prefix{}
	for p, e := range ips {
		m.pinnedIPs[e.ClusterID] = append(m.pinnedIPs[e.ClusterID], p)
	}
	return nil
}

// pruneCluster removes what a previous run left of cluster id and nobody
// claims now, once that cluster has fully synced: its ipcache entries and
// its backends kept in services. It returns how many of each went.
func (m *Merger) PruneCluster(id uint16) (ips, backends int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	// The cluster is ready: what it changed is written now. Other
	// clusters' pending changes stay pending (each of a hundred remotes
	// becoming ready writing every service would undo the coalescing).
	m.flushClusterLocked(id)
	return m.pruneClusterLocked(id)
}

func (m *Merger) pruneClusterLocked(id uint16) (ips, backends int) {
	for _, p := range m.pinnedIPs[id] {
		if !m.ips.has(p) && m.check(m.dp.DeleteIPCache(p), "prune ipcache", p) {
			ips++
		}
	}
	delete(m.pinnedIPs, id)
	changed := map[datapath.Frontend]bool{}
	for fe, bes := range m.pinned {
		kept := slices.DeleteFunc(slices.Clone(bes), func(b datapath.Backend) bool { return b.ClusterID == id })
		if len(kept) != len(bes) {
			m.pinned[fe] = kept
			changed[fe] = true
		}
	}
	return ips, m.syncServicesWithLocked(changed)
}

// syncServicesWithLocked rewrites the services that have one of fes; it
// returns how many backends those frontends lost.
func (m *Merger) syncServicesWithLocked(fes map[datapath.Frontend]bool) int {
	if len(fes) == 0 {
		return 0
	}
	written := func() int {
		n := 0
		for _, have := range m.writtenSvc {
			for fe, bes := range have {
				if fes[fe] {
					n += len(bes)
				}
			}
		}
		return n
	}
	before := written()
	for n, have := range m.writtenSvc {
		for fe := range have {
			if fes[fe] {
				m.syncService(n)
				break
			}
		}
	}
	return max(before-written(), 0)
}

// retained counts what the previous run left that still waits for its
// cluster's first sync: ipcache entries and service backends.
func (m *Merger) Retained() (ips, backends int, clusters []uint16) {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[uint16]bool{}
	for id, ps := range m.pinnedIPs {
		ips += len(ps)
		seen[id] = true
	}
	for _, bes := range m.pinned {
		for _, b := range bes {
			if b.ClusterID != m.localID {
				backends++
				seen[b.ClusterID] = true
			}
		}
	}
	for id := range seen {
		clusters = append(clusters, id)
	}
	slices.Sort(clusters)
	return ips, backends, clusters
}

// setStale records whether cluster's heartbeat is stale and rewrites the
// services that fail over on stale clusters.
func (m *Merger) SetStale(cluster string, stale bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stale[cluster] == stale {
		return
	}
	m.stale[cluster] = stale
	for n := range m.remoteSvcs {
		if ls := m.localSvcs[n]; ls != nil && parsePolicy(ls).failoverOnStale {
			m.syncService(n) // failover: written at once
		}
	}
}

// dropServices removes cluster's backends from every service (its ipcache
// claims stay).
func (m *Merger) DropServices(cluster string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropServicesLocked(cluster)
}

func (m *Merger) dropServicesLocked(cluster string) {
	for n, sr := range m.remoteSvcs {
		if sr.set(cluster, nil) {
			if len(sr.byCluster) == 0 {
				delete(m.remoteSvcs, n)
			}
			m.syncService(n) // a cluster's backends withdrawn: at once
		}
	}
}

// syncService writes the desired frontends of service n and deletes the ones
// it no longer has.
func (m *Merger) syncService(n ServiceName) {
	m.serviceWrittenLocked(n)
	if m.onChange != nil {
		m.onChange(n)
	}
	want := m.desiredFrontends(n)
	have := m.writtenSvc[n]
	failed := false
	for fe, bes := range want {
		bes = m.withPinned(fe, bes)
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
func (m *Merger) desiredFrontends(n ServiceName) map[datapath.Frontend][]datapath.Backend {
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
	remote       map[string][]datapath.Backend // cluster → healthy backends
	remoteTotal  map[string]int                // cluster → backends, healthy or not
	affinity     string
	selected     []datapath.Backend
	selectedFrom string   // "local", "remote", "local+remote", "weighted" or "none"
	warnings     []string // annotations that were ignored, and why
}

func (m *Merger) portViews(ls *statesource.Service) []portView {
	n := ServiceName{ls.Namespace, ls.Name}
	pol := parsePolicy(ls)
	var views []portView
	for _, p := range ls.Ports {
		proto, err := datapath.ParseProtocol(p.Proto())
		if err != nil {
			continue
		}
		// Unmapped, as the datapath stores them: the keys of writtenSvc must
		// be the datapath's keys, or prune would delete a live frontend.
		v := portView{frontend: datapath.Frontend{Addr: ls.ClusterIP.Unmap(), Port: p.Port, Protocol: proto},
			remote: map[string][]datapath.Backend{}, remoteTotal: map[string]int{}, affinity: pol.affinity}
		var serving []datapath.Backend // terminating, but still serving
		for _, e := range m.localIx.Backends(ls) {
			v.localTotal++
			b := datapath.Backend{Addr: e.IP.Unmap(), Port: p.Target(), Protocol: proto, ClusterID: m.localID}
			switch {
			case e.IsReady():
				v.local = append(v.local, b)
			case e.IsServing():
				serving = append(serving, b)
			}
		}
		// Each cluster's admitted backends, sorted, in cluster id order:
		// together in slot order (candidates.go).
		total := 0
		for _, e := range m.remoteSvcs[n].sorted() {
			bs := m.admittedLocked(e, p.Name, proto)
			if len(bs) == 0 {
				continue
			}
			v.remoteTotal[e.cluster] = len(bs)
			if !(pol.failoverOnStale && m.stale[e.cluster]) {
				v.remote[e.cluster] = bs
				total += len(bs)
			}
		}
		all := make([]datapath.Backend, 0, total) // the selection may keep it: sized exactly
		for _, e := range m.remoteSvcs[n].sorted() {
			all = append(all, v.remote[e.cluster]...)
		}
		if !slices.IsSortedFunc(all, compareBackends) {
			sortBackends(all) // two names with one cluster id
		}
		v.selected, v.selectedFrom = pol.selectSorted(m.localName, v.local, v.remote, all)
		if len(v.selected) == 0 && len(serving) > 0 {
			// No ready backend anywhere: terminating pods that still serve
			// are better than nothing (as Kubernetes does).
			v.selected, v.selectedFrom = serving, "local (terminating)"
		}
		v.warnings = pol.warnings
		views = append(views, v)
	}
	return views
}

// withPinned adds to bes the remote backends a previous run had selected
// for fe, while the first full sync is not complete: until then the remotes
// may simply not have been heard from yet.
func (m *Merger) withPinned(fe datapath.Frontend, bes []datapath.Backend) []datapath.Backend {
	old, ok := m.pinned[fe]
	if !ok {
		return bes
	}
	out := slices.Clone(bes)
	for _, b := range old {
		if b.ClusterID != m.localID && !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	sortBackends(out)
	return out
}

// retryFailed rewrites every service and prefix whose last write failed, so
// the datapath does not drift from the desired state after a transient
// error. It reports how many are still failing.
func (m *Merger) RetryFailed() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n := range m.failedSvc {
		m.syncService(n)
	}
	ps := make([]netip.Prefix, 0, len(m.failedIP))
	for p := range m.failedIP {
		ps = append(ps, p)
	}
	m.writeIPs(ps)
	return len(m.failedSvc) + len(m.failedIP)
}

// writeErrors returns the number of failed writes and the last error.
func (m *Merger) WriteErrors() (uint64, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.writeErrs, m.lastErr
}

// logEvery bounds write-failure logging to one line per operation per
// interval (a full map fails every write of a burst).
const logEvery = time.Second

// check counts a failed datapath write and logs it (limited per
// operation); it reports success. m.mu is held.
func (m *Merger) check(err error, op string, what any) bool {
	if err == nil {
		return true
	}
	m.writeErrs++
	m.lastErr = err.Error()
	if ok, suppressed := m.checkLog.Allow(op, time.Now()); ok {
		m.log.Error("datapath write failed", "op", op, "target", what, "err", err, "suppressedSinceLast", suppressed)
	}
	return false
}

// prune deletes from the datapath every entry the merged state does not
// hold: what a previous run left behind for a source that is gone. Called
// only once every remote configured at start has fully synced, so nothing
// still valid is ever removed.
func (m *Merger) Prune(dp datapath.Datapath) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushDirtyLocked() // what is kept is what was written
	ips, err := dp.IPCache()
	if err != nil {
		return fmt.Errorf("pruning: reading the ipcache: %w", err)
	}
	ipN := 0
	for p := range ips {
		if !m.ips.has(p) && m.check(dp.DeleteIPCache(p), "prune ipcache", p) {
			ipN++
		}
	}
	svcs, err := dp.Services()
	if err != nil {
		return fmt.Errorf("pruning: reading the services: %w", err)
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
	// From now on the merged state alone decides: drop what was kept from
	// the previous run and rewrite the services that carried it.
	changed := map[datapath.Frontend]bool{}
	for fe, bes := range m.pinned {
		for _, b := range bes {
			if b.ClusterID != m.localID {
				changed[fe] = true
			}
		}
	}
	m.pinned, m.pinnedIPs = nil, nil
	beN := m.syncServicesWithLocked(changed)
	m.log.Info("pruned entries nobody claims after the initial sync", "ipcache", ipN, "services", svcN, "backends", beN)
	return nil
}

// recheckIfNeeded has the policy programs check their cached flows again
// after a written ipcache entry changed identity or went away.
func (m *Merger) recheckIfNeeded() {
	if !m.recheck || m.recheckFlows == nil {
		return
	}
	m.recheck = false
	m.check(m.recheckFlows(), "recheck flows", "after an ipcache identity change")
}

// NewRemoteService converts a remote's global service into backends per port
// name. A service the remote does not share contributes no backends.
func NewRemoteService(c wire.Cluster, s *wire.ClusterService) *RemoteService {
	rs := &RemoteService{clusterID: uint16(c.ID), backends: map[string][]datapath.Backend{}}
	if !s.Shared {
		return rs
	}
	// Counted first: a remote's services are held for as long as it is
	// connected, each backend list exactly as long as it is.
	n := map[string]int{}
	for _, ports := range s.Backends {
		for portName := range ports {
			n[portName]++
		}
	}
	for ip, ports := range s.Backends {
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			continue // DecodeService already rejected unparseable addresses
		}
		for portName, l4 := range ports {
			proto, err := datapath.ParseProtocol(l4.Protocol)
			if err != nil {
				continue
			}
			bs := rs.backends[portName]
			if bs == nil {
				bs = make([]datapath.Backend, 0, n[portName])
			}
			rs.backends[portName] = append(bs, datapath.Backend{
				Addr: addr.Unmap(), Port: l4.Port, Protocol: proto, ClusterID: uint16(c.ID)})
		}
	}
	for _, bs := range rs.backends {
		sortBackends(bs) // in slot order, as the merge wants them
	}
	rs.topology = remoteTopology(s)
	return rs
}
