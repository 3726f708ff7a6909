// Package agentsync receives the mesh on a node: one connection per remote
// cluster (read from a directory of etcd client configs), the list+watch of
// each remote's nodes, identities, ipcache entries and global services, the
// validation of every entry (with per-remote limits) and mark-and-sweep. It
// hands what it accepted to package merge, which decides what the datapath
// holds and writes it. Remote state outlives a remote's failure: only an
// explicit disconnect drains it.
package agentsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/merge"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// Defaults of Config.
const (
	DefaultConfigPollInterval = time.Second
	DefaultProbeInterval      = time.Second
	DefaultProbeTimeout       = 3 * time.Second
	DefaultBackoffInitial     = 200 * time.Millisecond
	DefaultBackoffMax         = 30 * time.Second
	DefaultListPageSize       = 2000
	DefaultSyncTimeout        = 5 * time.Minute
	DefaultRetryInterval      = 5 * time.Second
	// DefaultHeartbeatTimeout: apiservers write the heartbeat every minute;
	// more than two missed intervals means a dead kvstore.
	DefaultHeartbeatTimeout = 3 * time.Minute
)

// ErrInvalidConfig is wrapped by every Config.Validate error.
var ErrInvalidConfig = errors.New("invalid agent config")

// Config of an agent. Zero durations and sizes take the defaults.
type Config struct {
	ClusterName string
	ClusterID   uint32
	// NodeName, when set, is this node's name in the local state: the
	// local nodes' addresses then enter the ipcache, this node's as the
	// host identity and the others' as remote-node, so that policy can
	// tell them from the world.
	NodeName             string
	MaxConnectedClusters uint32 // default 255

	// ConfigDir holds one etcd client config per remote cluster, named after
	// it. A file named after the local cluster is ignored.
	ConfigDir string
	// LocalSource delivers the local cluster's services and endpoints.
	LocalSource statesource.Source
	Datapath    datapath.Datapath

	ConfigPollInterval time.Duration
	ProbeInterval      time.Duration // how often each remote's heartbeat is read
	ProbeTimeout       time.Duration // a remote that does not answer within it is disconnected
	BackoffInitial     time.Duration
	BackoffMax         time.Duration
	ListPageSize       int64
	// ListPageBytes bounds the bytes of one list page (paging.go).
	ListPageBytes int64
	// SyncTimeout bounds how long entries left in the datapath by a previous
	// run wait for the remotes' first sync before they are pruned.
	SyncTimeout time.Duration
	// RetryInterval is how often datapath writes that failed are retried.
	RetryInterval time.Duration
	// HeartbeatTimeout: a remote whose heartbeat is older is reported stale.
	HeartbeatTimeout time.Duration
	// RemoteLimits bound what each remote may make the agent hold.
	RemoteLimits Limits
	// TrustRemoteAddresses turns off the check that a remote's ipcache
	// entries and service backends lie inside its own nodes' ranges (pod
	// CIDRs and node addresses; ownership.go). Only for peers whose IPAM
	// gives pods addresses outside any per-node CIDR (cloud ENI modes); then
	// an address claimed by two clusters goes to the lower cluster id.
	TrustRemoteAddresses bool
	// RemoteStateTTL, when set, revokes the service backends (only) of a
	// remote unreachable for longer; its ipcache entries and identities stay
	// so that established connections survive. Off by default.
	RemoteStateTTL time.Duration
	// OnRemoteNodes, when set, receives every remote cluster's nodes after
	// any of them changed (coalesced, at most every NodeNotifyInterval, from
	// one goroutine): WireGuard peers are built from them.
	OnRemoteNodes func(nodes []*wire.Node)
	// NodeNotifyInterval bounds how often OnRemoteNodes is called.
	NodeNotifyInterval time.Duration
	// Identities, when set, is told every identity of every cluster as it
	// is accepted and removed (after mark-and-sweep: an identity goes only
	// when its cluster's resync no longer has it, or when the cluster is
	// drained). The local cluster's come from the config in ConfigDir named
	// after the local cluster, when there is one: its own apiserver.
	Identities IdentityObserver
	// RecheckFlows, when set, is called (once per batch of ipcache
	// writes) after an ipcache entry the datapath held changed identity or
	// went away: the policy programs cache each flow's verdict with the
	// peer identity it was checked with (datapath.Maps.RecheckFlows).
	RecheckFlows func() error
	// OnServiceChange, when set, is told every service whose remote
	// backends may have changed (Agent.RemoteBackends); it must not block
	// (merge.Config.OnServiceChange).
	OnServiceChange func(merge.ServiceName)
	// Forward, when set, receives every remote's accepted entries instead
	// of the merge (forward.go): the agent is then a kvstoremesh cache's
	// reader, with no local state source and no datapath of its own.
	// Ownership and the local-overlap check are left to the agents that
	// read what it forwards; RemoteStateTTL does not apply.
	Forward ForwardSink
	Logger  *slog.Logger
}

func (c *Config) withDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.MaxConnectedClusters == 0 {
		c.MaxConnectedClusters = wire.DefaultMaxConnectedClusters
	}
	def(&c.ConfigPollInterval, DefaultConfigPollInterval)
	def(&c.ProbeInterval, DefaultProbeInterval)
	def(&c.ProbeTimeout, DefaultProbeTimeout)
	def(&c.BackoffInitial, DefaultBackoffInitial)
	def(&c.BackoffMax, DefaultBackoffMax)
	def(&c.SyncTimeout, DefaultSyncTimeout)
	def(&c.RetryInterval, DefaultRetryInterval)
	def(&c.HeartbeatTimeout, DefaultHeartbeatTimeout)
	def(&c.NodeNotifyInterval, 50*time.Millisecond)
	if c.ListPageSize == 0 {
		c.ListPageSize = DefaultListPageSize
	}
	if c.ListPageBytes == 0 {
		c.ListPageBytes = DefaultListPageBytes
	}
	c.RemoteLimits.withDefaults()
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate checks the config after defaults.
func (c *Config) Validate() error {
	local := wire.Cluster{Name: c.ClusterName, ID: c.ClusterID, MaxConnectedClusters: c.MaxConnectedClusters}
	if err := local.Validate(); err != nil {
		return fmt.Errorf("agentsync: %w: %w", ErrInvalidConfig, err)
	}
	switch {
	case c.ConfigDir == "":
		return fmt.Errorf("agentsync: %w: no config directory", ErrInvalidConfig)
	case c.LocalSource == nil && c.Forward == nil:
		return fmt.Errorf("agentsync: %w: no local state source", ErrInvalidConfig)
	case c.Datapath == nil && c.Forward == nil:
		return fmt.Errorf("agentsync: %w: no datapath", ErrInvalidConfig)
	case c.RemoteLimits.validate() != nil:
		return fmt.Errorf("agentsync: %w", c.RemoteLimits.validate())
	case c.BackoffInitial > c.BackoffMax:
		return fmt.Errorf("agentsync: %w: backoff initial %s exceeds max %s", ErrInvalidConfig, c.BackoffInitial, c.BackoffMax)
	}
	return nil
}

// Agent syncs one node with every remote cluster. Create with New, run with
// Run; Status may be called at any time.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	merger *merge.Merger
	// pruned is closed once entries of a previous run were pruned.
	pruned     chan struct{}
	running    atomic.Bool   // Run may be called once
	nodesDirty atomic.Bool   // a remote's nodes changed since OnRemoteNodes last ran
	readyCh    chan struct{} // signalled when a remote becomes ready

	mu       sync.Mutex
	remotes  map[string]*remote // guarded by mu
	invalid  map[string]string  // guarded by mu; config files that failed to load → error
	reserved map[uint32]string  // guarded by mu; cluster id → remote
}

// New validates cfg and returns an agent that is not yet running.
func New(cfg Config) (*Agent, error) {
	cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("cluster", cfg.ClusterName)
	if cfg.Forward != nil {
		// Nothing is merged; the merger and its in-memory datapath stay
		// empty (status and the prune bookkeeping read them).
		cfg.Datapath, cfg.LocalSource, cfg.RemoteStateTTL = datapath.NewMemory(), nil, 0
	}
	m := merge.New(merge.Config{Datapath: cfg.Datapath, ClusterName: cfg.ClusterName, ClusterID: uint16(cfg.ClusterID),
		NodeName: cfg.NodeName, RecheckFlows: cfg.RecheckFlows, TrustRemoteAddresses: cfg.TrustRemoteAddresses,
		OnServiceChange: cfg.OnServiceChange, CoalesceServices: merge.DefaultCoalesceServices, Logger: log})
	return &Agent{
		cfg: cfg, log: log,
		merger:   m,
		pruned:   make(chan struct{}),
		readyCh:  make(chan struct{}, 1),
		remotes:  map[string]*remote{},
		invalid:  map[string]string{},
		reserved: map[uint32]string{},
	}, nil
}

// RemoteBackends returns every remote cluster's backends of service n as
// the merge admits them (merge.Merger.RemoteBackends).
func (a *Agent) RemoteBackends(n merge.ServiceName) []merge.RemoteBackends {
	return a.merger.RemoteBackends(n)
}

// Pruned is closed once the remotes present at start have synced and
// entries left from a previous run that nobody claims were removed — or
// once SyncTimeout passed, when the entries of the remotes not yet synced
// stay until each of them has.
func (a *Agent) Pruned() <-chan struct{} { return a.pruned }

// Run syncs until ctx is done, then stops every remote (keeping the
// datapath as it is: pinned maps keep serving while the agent restarts).
func (a *Agent) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return errors.New("agentsync: Run called twice: create a new Agent")
	}
	if err := a.merger.LoadPinned(a.cfg.Datapath); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	localReady := make(chan struct{})
	srcErr := make(chan error, 1)
	var once sync.Once
	var wg sync.WaitGroup
	if a.cfg.LocalSource == nil { // forwarding: no local state to wait for
		close(localReady)
	} else {
		wg.Add(1)
		go func() {
			defer wg.Done()
			srcErr <- a.cfg.LocalSource.Run(ctx, func(st *statesource.State) {
				a.merger.SetLocal(st)
				once.Do(func() { close(localReady) })
			})
		}()
	}
	// Deferred in reverse: stop the remotes, cancel, wait for the rest,
	// then write the merger's pending service changes and stop its timer.
	defer a.merger.Close()
	defer wg.Wait()
	defer cancel()
	defer a.stopAll()

	// Remotes connect only once the local state is known: a remote's entries
	// are checked against the local addresses.
	select {
	case <-localReady:
	case err := <-srcErr:
		return fmt.Errorf("agentsync: local state source: %w", err)
	case <-ctx.Done():
		return nil
	}
	if err := a.scanConfigDir(ctx); err != nil {
		return err
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.initialPrune(ctx, localReady)
	}()
	t := time.NewTicker(a.cfg.ConfigPollInterval)
	defer t.Stop()
	retry := time.NewTicker(a.cfg.RetryInterval)
	defer retry.Stop()
	staleCheck := time.NewTicker(a.cfg.ProbeInterval)
	defer staleCheck.Stop()
	nodeTick := time.NewTicker(a.cfg.NodeNotifyInterval)
	defer nodeTick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-nodeTick.C:
			if a.cfg.OnRemoteNodes != nil && a.nodesDirty.Swap(false) {
				a.cfg.OnRemoteNodes(a.RemoteNodes())
			}
		case <-staleCheck.C:
			a.updateStale()
		case <-retry.C:
			if n := a.merger.RetryFailed(); n > 0 {
				a.log.Warn("datapath writes still failing after retry", "entries", n)
			}
		case err := <-srcErr:
			if err != nil {
				return fmt.Errorf("agentsync: local state source: %w", err)
			}
			return nil
		case <-t.C:
			if err := a.scanConfigDir(ctx); err != nil {
				a.log.Error("config directory unreadable, keeping the remotes as they are", "dir", a.cfg.ConfigDir, "err", err)
			}
		}
	}
}

// scanConfigDir starts remotes for new files, reconnects those whose file
// changed and drains those whose file is gone.
func (a *Agent) scanConfigDir(ctx context.Context) error {
	entries, err := os.ReadDir(a.cfg.ConfigDir)
	if err != nil {
		return fmt.Errorf("agentsync: config directory: %w", err)
	}
	present := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue // hidden files (Kubernetes' ..data links)
		}
		path := filepath.Join(a.cfg.ConfigDir, name)
		if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		present[name] = true
		a.reconcileRemote(ctx, name, path)
	}
	a.mu.Lock()
	var gone []*remote
	for name, r := range a.remotes {
		if !present[name] {
			gone = append(gone, r)
			delete(a.remotes, name)
		}
	}
	for name := range a.invalid {
		if !present[name] {
			delete(a.invalid, name)
		}
	}
	a.mu.Unlock()
	for _, r := range gone {
		r.log.Info("config removed: disconnecting and draining")
		r.stop(true)
		a.nodesDirty.Store(true)
	}
	if len(gone) > 0 {
		a.remoteReady() // initialPrune no longer waits for them
	}
	return nil
}

func (a *Agent) reconcileRemote(ctx context.Context, name, path string) {
	raw, err := os.ReadFile(path)
	a.mu.Lock()
	old := a.remotes[name]
	a.mu.Unlock()
	if old != nil && err == nil && string(old.raw) == string(raw) {
		return // unchanged: not parsed again
	}
	var cfg RemoteConfig
	if err == nil {
		cfg, err = ParseRemoteConfig(name, path, raw)
	} else {
		err = fmt.Errorf("agentsync: %w", err)
	}
	if err != nil {
		a.mu.Lock()
		if a.invalid[name] != err.Error() {
			a.log.Error("invalid remote config, not connecting", "remote", name, "err", err)
		}
		a.invalid[name] = err.Error()
		a.mu.Unlock()
		return
	}
	if old != nil {
		old.log.Info("config changed: reconnecting (state kept)")
		old.stop(false)
	}
	r := newRemote(a, name, cfg, raw)
	if old != nil {
		r.kinds, r.status.Failures = old.kinds, old.status.Failures // keep what we know; the resync sweeps
		for _, ks := range r.kinds {
			ks.r = r
		}
	}
	a.mu.Lock()
	a.remotes[name] = r
	delete(a.invalid, name)
	a.mu.Unlock()
	r.start(ctx)
}

// remoteList returns the remotes (the local cluster's own apiserver among
// them) at this moment.
func (a *Agent) remoteList() []*remote {
	a.mu.Lock()
	defer a.mu.Unlock()
	rs := make([]*remote, 0, len(a.remotes))
	for _, r := range a.remotes {
		rs = append(rs, r)
	}
	return rs
}

// stopAll stops every remote without draining.
func (a *Agent) stopAll() {
	rs := a.remoteList()
	for _, r := range rs {
		r.stop(false)
	}
}

// RemoteNodes returns the nodes of every connected or remembered remote,
// each with only the pod CIDRs and addresses its cluster owns (a node
// stating another cluster's range does not get it routed to itself).
func (a *Agent) RemoteNodes() []*wire.Node {
	rs := a.remoteList()
	var out []*wire.Node
	for _, r := range rs {
		if r.self {
			continue
		}
		ks := r.kinds[wire.Nodes]
		ks.mu.Lock()
		if ns, ok := ks.store.(*nodeStore); ok {
			for _, e := range ns.entries {
				out = append(out, e.v)
			}
		}
		ks.mu.Unlock()
	}
	out = a.merger.OwnedNodes(out)
	sort.Slice(out, func(i, j int) bool {
		if out[i].Cluster != out[j].Cluster {
			return out[i].Cluster < out[j].Cluster
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// updateStale tells the merger which remotes' heartbeats are stale, for the
// services that fail over on stale clusters.
func (a *Agent) updateStale() {
	rs := a.remoteList()
	now := time.Now()
	for _, r := range rs {
		r.mu.Lock()
		stale := r.staleLocked(now)
		r.mu.Unlock()
		a.merger.SetStale(r.name, stale)
	}
}

// reserve claims cluster id for remote name; an id used by the local cluster
// or another remote is refused.
func (a *Agent) reserve(name string, id uint32) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if id == a.cfg.ClusterID {
		return fmt.Errorf("agentsync: remote %s: %w: id %d is the local cluster's (%s); give every cluster its own id", name, ErrClusterIDConflict, id, a.cfg.ClusterName)
	}
	if other, ok := a.reserved[id]; ok && other != name {
		return fmt.Errorf("agentsync: remote %s: %w: id %d is already used by remote %s; give every cluster its own id", name, ErrClusterIDConflict, id, other)
	}
	for oid, owner := range a.reserved {
		if owner == name && oid != id {
			return fmt.Errorf("agentsync: remote %s: %w: its id changed from %d to %d; disconnect it (remove its config) and connect it again",
				name, ErrClusterIDConflict, oid, id)
		}
	}
	a.reserved[id] = name
	return nil
}

// reservedID returns the id reserved for remote name, 0 if none.
func (a *Agent) reservedID(name string) uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, owner := range a.reserved {
		if owner == name {
			return id
		}
	}
	return 0
}

// release frees the id of remote name.
func (a *Agent) release(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, owner := range a.reserved {
		if owner == name {
			delete(a.reserved, id)
		}
	}
}

func (a *Agent) remoteReady() {
	select {
	case a.readyCh <- struct{}{}:
	default:
	}
}

// initialPrune waits for the local state and for every remote configured at
// start to be ready, then removes from the datapath whatever no one claims:
// entries of a previous run whose source is gone. A remote that was removed
// meanwhile is no longer waited for. Each remote's own entries of the
// previous run are pruned as soon as it has fully synced (pruneCluster);
// a remote that is down keeps its entries however long it stays down.
// After SyncTimeout, Pruned is closed (the enforcer starts) but nothing of
// the remotes not yet synced is removed.
func (a *Agent) initialPrune(ctx context.Context, localReady <-chan struct{}) {
	timeout := time.NewTimer(a.cfg.SyncTimeout)
	defer timeout.Stop()
	select {
	case <-localReady:
	case <-ctx.Done():
		return
	}
	a.mu.Lock()
	names := make([]string, 0, len(a.remotes))
	for name := range a.remotes {
		names = append(names, name)
	}
	a.mu.Unlock()
	timedOut := false
	for !a.allReady(names) {
		select {
		case <-ctx.Done():
			return
		case <-a.readyCh:
		case <-timeout.C:
			timedOut = true
			a.log.Warn("not every remote synced within the sync timeout: keeping their entries of the previous run until they do",
				"timeout", a.cfg.SyncTimeout, "waitingFor", a.notReady(names))
			close(a.pruned)
		}
	}
	if err := a.merger.Prune(a.cfg.Datapath); err != nil {
		a.log.Error("prune after initial sync failed", "err", err)
	}
	if !timedOut {
		close(a.pruned)
	}
}

// notReady names the remotes of names still configured and not ready.
func (a *Agent) notReady(names []string) []string {
	var out []string
	for _, name := range names {
		a.mu.Lock()
		r := a.remotes[name]
		a.mu.Unlock()
		if r != nil && !r.isReady() {
			out = append(out, name)
		}
	}
	return out
}

// allReady reports whether every remote of names still configured is ready
// (looked up by name: a changed config replaces the remote object).
func (a *Agent) allReady(names []string) bool {
	for _, name := range names {
		a.mu.Lock()
		r := a.remotes[name]
		a.mu.Unlock()
		if r != nil && !r.isReady() {
			return false
		}
	}
	return true
}

// RemoteStatus returns the status of remote name alone (cheaper than Status
// when only one remote matters).
func (a *Agent) RemoteStatus(name string) (RemoteStatus, bool) {
	a.mu.Lock()
	r := a.remotes[name]
	a.mu.Unlock()
	if r == nil {
		return RemoteStatus{}, false
	}
	return r.snapshot(), true
}

// Status returns the agent's status.
func (a *Agent) Status() Status {
	rs := a.remoteList()
	a.mu.Lock()
	invalid := copyMap(a.invalid)
	a.mu.Unlock()
	st := Status{Cluster: a.cfg.ClusterName, ClusterID: a.cfg.ClusterID, Datapath: a.cfg.Datapath.Kind()}
	var waiting []string
	for _, r := range rs {
		s := r.snapshot()
		if s.ClusterID != 0 && !r.self {
			s.NotInForce = a.merger.NotInForce(s.Name, uint16(s.ClusterID))
		}
		if !s.Ready {
			waiting = append(waiting, s.Name)
		}
		if r.self {
			st.Local = &s
			continue
		}
		st.Remotes = append(st.Remotes, s)
	}
	if ips, bes, ids := a.merger.Retained(); ips+bes > 0 {
		sort.Strings(waiting)
		st.Retained = &Retained{IPCache: ips, Backends: bes, Clusters: ids, WaitingFor: waiting}
	}
	for name, msg := range invalid {
		st.Remotes = append(st.Remotes, RemoteStatus{Name: name, LastError: msg, Failures: 1, Rejected: map[string]uint64{}, Synced: map[string]bool{}})
	}
	sort.Slice(st.Remotes, func(i, j int) bool { return st.Remotes[i].Name < st.Remotes[j].Name })
	st.Services = a.merger.ServiceStatuses()
	st.DatapathErrors, st.LastDatapathError = a.merger.WriteErrors()
	return st
}

// RetainedClusters lists the cluster ids whose entries of a previous run
// the agent still keeps because they have not fully synced since it
// started (see Pruned). Policy keeps what it allowed for their identities
// until they leave this list.
func (a *Agent) RetainedClusters() []uint16 {
	_, _, ids := a.merger.Retained()
	return ids
}
