package enforcer

import (
	"context"
	"log/slog"
	"maps"
	"math/bits"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/internal/loglimit"
	"github.com/clustermesh/clustermesh/policy"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// Enforcer computes and enforces the policy of one node's endpoints.
// Create with New, run with Run; its observer and source methods may be
// called from any goroutine, before or while it runs.
type Enforcer struct {
	cfg  Config
	log  *slog.Logger
	kick chan struct{} // capacity 1: something is pending

	mu sync.Mutex
	// pending are identity changes not yet given to the engine, the latest
	// per id (nil labels: deleted). Guarded by mu.
	pending map[uint32]wire.Labels
	// identities are every cluster's, for flow enrichment. Guarded by mu.
	identities map[uint32]wire.Labels
	local      *statesource.State // guarded by mu; nil until the first state
	localNew   bool               // guarded by mu: local changed since the last step
	pods       map[netip.Addr]podRef
	// sources are the policies of sources other than the directory (the
	// Kubernetes objects), by name; sourcesNew says they changed. Guarded
	// by mu.
	sources    map[string]*policy.Compiled
	sourcesNew bool
	status     Status // guarded by mu

	// Owned by Run's goroutine.
	engine   *policy.Engine
	byLabels map[string]uint32 // local identities by their labels' string
	labelsOf map[uint32]string // the inverse of byLabels
	// epsDirty: something the endpoints depend on changed since the last
	// reconciliation (otherwise they are looked at every retryTicks ticks).
	epsDirty   bool
	ticks      int
	retryTicks int // every this many reload ticks the endpoints are reconciled anyway
	files      policyFiles
	fromDir    *policy.Compiled // the directory's last valid set
	eps        endpoints
	ready      bool // Ready closed: writes allowed
	written    bool // the policy map was synced at least once
	dirty      bool // a write failed (or a retained cluster synced): the next step syncs the whole map
	entries    int  // policy keys in the engine
	// known are the identities the engine has (the peers whose entries it
	// computes).
	known map[uint32]struct{}
	// clusterShift: an identity's cluster id is id >> clusterShift.
	clusterShift uint
	// retained is the last RetainedClusters read, adopted only once the
	// engine has every identity delivered before the read (so a cluster
	// not in it has its identities computed); retainedRead says it was.
	retained     map[uint16]bool
	retainedRead bool
	// kept are the clusters whose unknown peers' entries the last full
	// sync kept; checkRetained: look at RetainedClusters again (a tick).
	kept          map[uint16]bool
	checkRetained bool
	// redir: the entries with L7 rules (read by the proxy too); fq: the
	// FQDN-selected addresses and their identities.
	redir      redirects
	retryProxy bool
	fq         fqdnState
	loglim     *loglimit.Keyed // L7 proxy and FQDN errors, per kind
}

type podRef struct{ namespace, pod string }

// New returns an enforcer for cfg.
func New(cfg Config) (*Enforcer, error) {
	cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Enforcer{
		cfg: cfg, log: cfg.Logger.With("component", "policy"), kick: make(chan struct{}, 1),
		pending: map[uint32]wire.Labels{}, identities: map[uint32]wire.Labels{}, pods: map[netip.Addr]podRef{},
		sources: map[string]*policy.Compiled{}, retryTicks: defaultRetryTicks,
		engine: policy.NewEngine(cfg.ClusterName), byLabels: map[string]uint32{}, labelsOf: map[uint32]string{},
		known: map[uint32]struct{}{wire.IdentityHost: {}},
		redir: newRedirects(), fq: newFQDNState(), loglim: loglimit.New(time.Minute),
	}
	first, _ := wire.IdentityRange(1, cfg.MaxConnectedClusters)
	e.clusterShift = uint(bits.TrailingZeros32(first))
	// The node itself: its addresses are the host identity in the ipcache
	// (agentsync, with a node name), and every endpoint accepts it.
	e.engine.UpsertIdentity(wire.IdentityHost, wire.HostLabels)
	e.identities[wire.IdentityHost] = wire.HostLabels
	e.files = policyFiles{dir: cfg.PolicyDir, opts: policy.Options{LocalCluster: cfg.ClusterName,
		DefaultLocalCluster: !cfg.AllClustersByDefault, AllowFromHost: true}}
	e.eps = endpoints{attacher: cfg.Attacher, attached: map[int]tcpolicy.Endpoint{}}
	e.status.PolicyDir = cfg.PolicyDir
	return e, nil
}

func (e *Enforcer) wake() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// UpsertIdentity records an identity of any cluster (agentsync.IdentityObserver).
func (e *Enforcer) UpsertIdentity(_ string, id uint32, labels wire.Labels) {
	e.mu.Lock()
	e.pending[id] = labels
	e.identities[id] = labels
	e.mu.Unlock()
	e.wake()
}

// DeleteIdentity forgets an identity (agentsync.IdentityObserver).
func (e *Enforcer) DeleteIdentity(_ string, id uint32) {
	e.mu.Lock()
	e.pending[id] = nil
	delete(e.identities, id)
	e.mu.Unlock()
	e.wake()
}

// SetLocalState records the local cluster's state (its endpoints).
func (e *Enforcer) SetLocalState(st *statesource.State) {
	pods := make(map[netip.Addr]podRef, len(st.Endpoints))
	for _, ep := range st.Endpoints {
		pods[ep.IP.Unmap()] = podRef{ep.Namespace, ep.Pod}
	}
	e.mu.Lock()
	e.local, e.localNew, e.pods = st, true, pods
	e.mu.Unlock()
	e.wake()
}

// SetPolicies replaces the policies of source, a source beside the policy
// directory (the cluster's Kubernetes objects): c holds only valid rules
// (the source keeps the last valid version of each of its objects); nil
// removes the source's policies. The enforced set is the directory's and
// every source's together.
func (e *Enforcer) SetPolicies(source string, c *policy.Compiled) {
	e.mu.Lock()
	if c == nil {
		delete(e.sources, source)
	} else {
		e.sources[source] = c
	}
	e.sourcesNew = true
	e.mu.Unlock()
	e.wake()
}

// PolicyOptions are the options policies are compiled with, for sources
// that compile their own.
func (e *Enforcer) PolicyOptions() policy.Options { return e.files.opts }

// Run computes and enforces until ctx is done. It computes from the start
// but writes nothing (and attaches nothing) until ready is closed — the
// agent's first full sync (agentsync.Agent.Pruned), so that a restarted
// agent keeps enforcing the pinned policy of its previous run until it knows
// every identity again; nil ready writes at once. Clusters the agent still
// retains when ready closes (down since the restart: Config.RetainedClusters)
// keep their identities' entries of the previous run until they sync.
// Attachments stay when it returns: the pinned programs keep enforcing
// across an agent restart.
func (e *Enforcer) Run(ctx context.Context, ready <-chan struct{}) error {
	t := time.NewTicker(e.cfg.ReloadInterval)
	defer t.Stop()
	defer e.stopFQDN()
	if ready == nil {
		e.ready, e.epsDirty = true, true
	}
	e.sweepFQDN()
	e.reload()
	for {
		e.step()
		select {
		case <-ctx.Done():
			return nil
		case <-e.kick:
		case <-t.C:
			e.ticks++
			e.reload()
			// Endpoints waiting for their veth are looked at every tick,
			// all of them every retryTicks (a veth recreated under its name).
			e.epsDirty = e.epsDirty || e.eps.retry || e.ticks%e.retryTicks == 0
			e.checkRetained = true
			// Entries waiting for a proxy listener: ask again.
			e.retryProxy = e.redir.failed > 0
		case <-ready:
			ready, e.ready, e.epsDirty = nil, true, true
			e.log.Info("agent synced: enforcing policy")
		}
	}
}

// reload reads the policy directory; a changed valid set replaces the
// policies, an invalid one is reported and the last valid set stays.
func (e *Enforcer) reload() {
	c, changed, err := e.files.load()
	if changed && err == nil {
		e.fromDir = c
		e.setPolicies()
		e.log.Info("policy directory loaded", "files", len(e.files.names), "rules", c.Rules())
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.status.PolicyFiles = e.files.names
	switch {
	case changed && err != nil:
		e.status.PolicyReloadErrors++
		e.status.LastPolicyError, e.status.LastPolicyErrorTime = err.Error(), time.Now()
		e.log.Error("invalid policy: keeping the last valid policies", "err", err)
	case changed:
		e.status.LastPolicyError = ""
	}
}

// setPolicies gives the engine the directory's and every source's
// policies together.
func (e *Enforcer) setPolicies() {
	all := &policy.Compiled{}
	if e.fromDir != nil {
		all.Merge(e.fromDir)
	}
	e.mu.Lock()
	e.sourcesNew = false
	names := make([]string, 0, len(e.sources))
	for name := range e.sources {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		all.Merge(e.sources[name])
	}
	e.status.Rules = all.Rules()
	e.mu.Unlock()
	e.epsDirty = true // a policy may enforce a direction without allowing anything
	e.apply(e.engine.SetPolicies(all))
	e.fq.want, e.fq.wantNew = all.FQDNPatterns(), true
}

// step gives the engine what changed, writes the result and reconciles the
// attachments.
func (e *Enforcer) step() {
	// Read before the identities are taken: a cluster that left the
	// retained set delivered its identities before, so once the engine has
	// them the set may be used.
	retained, fresh := e.readRetained()
	e.mu.Lock()
	pending := e.pending
	e.pending = map[uint32]wire.Labels{}
	local, sourcesNew, localNew := e.local, e.sourcesNew, e.localNew
	e.localNew = false
	notes := e.fq.pending
	e.fq.pending = nil
	e.mu.Unlock()
	e.epsDirty = e.epsDirty || localNew

	// Identities first, then the retained set read above (the engine now
	// has every identity delivered before that read), then policies: every
	// full sync of this step keeps only what it must.
	var changes []policy.Change
	for id, ls := range pending {
		if ls == nil {
			changes = append(changes, e.engine.RemoveIdentity(id)...)
			delete(e.known, id)
		} else {
			changes = append(changes, e.engine.UpsertIdentity(id, ls)...)
			e.known[id] = struct{}{}
		}
		e.epsDirty = e.indexLocal(id, ls) || e.epsDirty
	}
	if fresh {
		e.adoptRetained(retained)
	}
	e.apply(changes)
	if sourcesNew {
		e.setPolicies()
	}
	if e.ready && e.fq.wantNew {
		// Only once the map was written whole: the previous run's entries
		// of node-local identities are gone before this run numbers any.
		e.fq.wantNew = false
		e.apply(e.subscribeFQDN(e.fq.want))
	}
	e.stepFQDN(notes)
	if e.ready && e.epsDirty {
		e.epsDirty = false
		e.reconcileEndpoints(local)
	}
	e.publishStatus()
}

// readRetained reads RetainedClusters when a full sync is due, and on a
// tick while the map keeps entries of some cluster.
func (e *Enforcer) readRetained() ([]uint16, bool) {
	check := e.checkRetained
	e.checkRetained = false
	if e.cfg.RetainedClusters == nil || !e.ready {
		return nil, false
	}
	if e.written && !e.dirty && (!check || len(e.kept) == 0) {
		return nil, false
	}
	return e.cfg.RetainedClusters(), true
}

// adoptRetained makes ids the retained clusters. When a cluster whose
// entries the map keeps is no longer among them (it synced: its identities
// are known and computed), the next write is a full sync without them.
func (e *Enforcer) adoptRetained(ids []uint16) {
	e.retained, e.retainedRead = make(map[uint16]bool, len(ids)), true
	for _, id := range ids {
		e.retained[id] = true
	}
	if !e.written || e.dirty {
		return
	}
	for id := range e.kept {
		if !e.retained[id] {
			e.dirty = true
			e.log.Info("cluster synced since the restart: rewriting the policy map without its previous run's entries", "clusterID", id)
		}
	}
}

// keepPeer says which peers' entries a full sync keeps: the identities of
// a retained cluster that the engine does not know (a cluster down since
// the restart); nil when no cluster is retained.
func (e *Enforcer) keepPeer() func(peer uint32) bool {
	if len(e.retained) == 0 {
		return nil
	}
	return func(peer uint32) bool {
		if peer < wire.MinClusterIdentity || !e.retained[uint16(peer>>e.clusterShift)] {
			return false
		}
		_, known := e.known[peer]
		return !known
	}
}

// defaultRetryTicks: every this many reload ticks the endpoints are
// reconciled even when nothing changed (a veth recreated under the same
// name).
const defaultRetryTicks = 10

// indexLocal keeps byLabels: the local identities by their labels.
// It reports whether a local identity came, went or changed: only those
// change what an endpoint resolves to (a remote identity changes peers'
// entries, not any endpoint's identity or enforced directions).
func (e *Enforcer) indexLocal(id uint32, ls wire.Labels) bool {
	old, had := e.labelsOf[id]
	k, local := "", false
	if c, _ := ls.Get(wire.ClusterLabel); ls != nil && c == e.cfg.ClusterName {
		k, local = ls.String(), true
	}
	if had && local && old == k {
		return false
	}
	if had {
		delete(e.byLabels, old)
		delete(e.labelsOf, id)
	}
	if local {
		e.byLabels[k], e.labelsOf[id] = id, k
	}
	return had || local
}

// apply writes engine changes: incrementally once the map was synced, as
// a full sync the first time and after a failed write.
func (e *Enforcer) apply(changes []policy.Change) {
	dc := make([]tcpolicy.Change, 0, len(changes))
	for _, c := range changes {
		if c.Add {
			if !c.Update {
				e.entries++
			}
		} else {
			e.entries--
		}
		dc = e.redirectChanges(dc, c)
	}
	defer e.closeIdle() // after the entries that used them went
	if !e.ready {
		return
	}
	if !e.written || e.dirty || e.retryProxy {
		e.retryProxy = false
		e.syncAll()
		return
	}
	if len(dc) == 0 {
		return
	}
	if err := e.cfg.Policy.ApplyPolicy(dc); err != nil {
		e.writeFailed(err)
	}
}

// syncAll makes the policy map exactly the engine's policy.
func (e *Enforcer) syncAll() {
	var keys []tcpolicy.Key
	for _, id := range e.engine.Endpoints() {
		for _, k := range e.engine.Endpoint(id).Keys() {
			if dk, ok := e.datapathKey(id, k); ok {
				keys = append(keys, dk)
			}
		}
	}
	if e.cfg.RetainedClusters != nil && !e.retainedRead {
		// Only when writing without waiting for the agent (Run with nil
		// ready) before the first step.
		e.adoptRetained(e.cfg.RetainedClusters())
	}
	if err := e.cfg.Policy.SyncPolicyKeeping(keys, e.keepPeer()); err != nil {
		e.writeFailed(err)
		return
	}
	e.written, e.dirty = true, false
	e.kept = maps.Clone(e.retained)
	if len(e.kept) > 0 {
		e.log.Info("policy map synced, keeping the previous run's entries for the unknown identities of clusters not synced since the restart",
			"entries", len(keys), "endpoints", len(e.engine.Endpoints()), "retainedClusters", slices.Sorted(maps.Keys(e.kept)))
		return
	}
	e.log.Info("policy map synced", "entries", len(keys), "endpoints", len(e.engine.Endpoints()))
}

func (e *Enforcer) writeFailed(err error) {
	e.dirty = true
	e.mu.Lock()
	e.status.WriteErrors++
	e.status.LastWriteError = err.Error()
	e.mu.Unlock()
	e.log.Error("policy write failed: the whole policy map is rewritten at the next change or reload", "err", err)
}

// toDatapathKey converts one engine key of local identity ep.
func toDatapathKey(ep uint32, k policy.Key) tcpolicy.Key {
	dir := datapath.Ingress
	if k.Direction == policy.Egress {
		dir = datapath.Egress
	}
	return tcpolicy.Key{Endpoint: ep, Peer: k.Peer, Direction: dir, Protocol: datapath.Protocol(k.Protocol), Port: k.From, EndPort: k.To}
}
