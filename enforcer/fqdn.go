package enforcer

import (
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/policy"
)

// Node-local identities of FQDN-selected addresses: localIdentityFlag | n,
// n from 1, Cilium's local scope (identity.LocalIdentityFlag, 16777216):
// above every cluster's range, never published, meaningful on this node
// only (its ipcache and policy map).
const (
	localIdentityFlag  = 1 << 24
	maxLocalIdentities = policy.MaxPeerIdentity - localIdentityFlag
	// DefaultMaxFQDNAddresses is Config.MaxFQDNAddresses' default.
	DefaultMaxFQDNAddresses = 65536
)

// fqdnState is the addresses the subscribed FQDN patterns hold, each with
// the node-local identity its patterns label. Owned by Run's goroutine but
// pending (guarded by Enforcer.mu).
type fqdnState struct {
	// want are the policies' patterns, subscribed (subs) once the agent
	// synced; wantNew: they changed since.
	want    []string
	wantNew bool
	subs    map[string]fqdnSub
	seq     uint64
	addrs   map[netip.Addr]*fqdnAddr
	free    []uint32 // released identities, reused first
	next    uint32   // the next never-used n
	refused uint64   // addresses over MaxFQDNAddresses
	errors  uint64   // failed ipcache writes
	lastErr string
	latency prometheus.Histogram

	pending []fqdnNote // guarded by Enforcer.mu
}

type fqdnSub struct {
	seq    uint64
	cancel func()
}

type fqdnAddr struct {
	id       uint32 // 0: none (refused)
	patterns map[string]struct{}
	since    time.Time // the earliest notification not yet written
}

// fqdnNote is one notification of a subscription (seq tells a cancelled
// subscription's late ones).
type fqdnNote struct {
	pattern        string
	seq            uint64
	added, removed []netip.Addr
	at             time.Time
}

func newFQDNState() fqdnState {
	return fqdnState{subs: map[string]fqdnSub{}, addrs: map[netip.Addr]*fqdnAddr{}, next: 1,
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "clustermesh_policy_fqdn_allow_seconds",
			Help:    "Time from the FQDN cache's notification of a new address to its policy entries and ipcache entry written.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 14),
		})}
}

// subscribeFQDN makes the subscriptions the patterns of the policies: new
// patterns subscribed (their current addresses come at once), gone ones
// cancelled and taken off their addresses. It returns the policy changes.
func (e *Enforcer) subscribeFQDN(patterns []string) []policy.Change {
	f := &e.fq
	var touched []netip.Addr
	for p, sub := range f.subs {
		if slices.Contains(patterns, p) {
			continue
		}
		sub.cancel()
		delete(f.subs, p)
		for a, st := range f.addrs {
			if _, ok := st.patterns[p]; ok {
				delete(st.patterns, p)
				touched = append(touched, a)
			}
		}
	}
	if len(patterns) > 0 && (e.cfg.FQDN == nil || e.cfg.IPCache == nil) {
		f.lastErr = "toFQDNs allow nothing: the agent has no FQDN cache (DNS proxy) or ipcache"
	}
	for _, p := range patterns {
		if _, ok := f.subs[p]; ok || e.cfg.FQDN == nil || e.cfg.IPCache == nil {
			continue
		}
		f.seq++
		seq := f.seq
		cancel, err := e.cfg.FQDN.Subscribe(p, func(added, removed []netip.Addr) { e.noteFQDN(p, seq, added, removed) })
		if err != nil {
			f.lastErr = "subscribing to " + p + ": " + err.Error()
			e.log.Error("FQDN pattern refused by the FQDN cache: its addresses are not allowed", "pattern", p, "err", err)
			continue
		}
		f.subs[p] = fqdnSub{seq: seq, cancel: cancel}
	}
	return e.syncFQDN(touched)
}

// noteFQDN queues a notification (the FQDN cache's goroutine, with its
// lock held: no waiting here).
func (e *Enforcer) noteFQDN(pattern string, seq uint64, added, removed []netip.Addr) {
	n := fqdnNote{pattern: pattern, seq: seq, added: slices.Clone(added), removed: slices.Clone(removed), at: time.Now()}
	e.mu.Lock()
	e.fq.pending = append(e.fq.pending, n)
	e.mu.Unlock()
	e.wake()
}

// stepFQDN applies the queued notifications: addresses gain or lose
// patterns, and their identities, ipcache and policy entries follow.
func (e *Enforcer) stepFQDN(notes []fqdnNote) {
	f := &e.fq
	var touched []netip.Addr
	for _, n := range notes {
		if sub, ok := f.subs[n.pattern]; !ok || sub.seq != n.seq {
			continue // cancelled since
		}
		for _, a := range n.added {
			a = a.Unmap()
			st := f.addrs[a]
			if st == nil {
				st = &fqdnAddr{patterns: map[string]struct{}{}}
				f.addrs[a] = st
			}
			if st.since.IsZero() {
				st.since = n.at
			}
			st.patterns[n.pattern] = struct{}{}
			touched = append(touched, a)
		}
		for _, a := range n.removed {
			a = a.Unmap()
			if st := f.addrs[a]; st != nil {
				delete(st.patterns, n.pattern)
				touched = append(touched, a)
			}
		}
	}
	if len(touched) > 0 {
		e.apply(e.syncFQDN(touched))
		e.writeFQDNAddrs(touched)
	}
}

// syncFQDN gives the engine the identities of the touched addresses:
// removed (ipcache entry first) when no pattern holds them any more,
// allocated or relabelled otherwise. The caller applies the changes, then
// writes the new addresses' ipcache entries (writeFQDNAddrs): an address
// gets its identity only once that identity is allowed.
func (e *Enforcer) syncFQDN(touched []netip.Addr) []policy.Change {
	f := &e.fq
	var changes []policy.Change
	for _, a := range touched {
		st := f.addrs[a]
		if st == nil {
			continue
		}
		if len(st.patterns) == 0 {
			changes = append(changes, e.dropFQDNAddr(a, st)...)
			continue
		}
		if st.id == 0 {
			if st.id = e.allocLocal(); st.id == 0 {
				f.refused++
				delete(f.addrs, a)
				if ok, suppressed := e.loglim.Allow("fqdn full", time.Now()); ok {
					e.log.Warn("FQDN address refused: MaxFQDNAddresses reached", "addr", a, "max", e.cfg.MaxFQDNAddresses, "suppressed", suppressed)
				}
				continue
			}
		}
		ls := policy.FQDNLabels(netip.PrefixFrom(a, a.BitLen()), slices.Sorted(maps.Keys(st.patterns)))
		e.mu.Lock()
		old := e.identities[st.id]
		e.identities[st.id] = ls
		e.mu.Unlock()
		if old.String() != ls.String() {
			changes = append(changes, e.engine.UpsertIdentity(st.id, ls)...)
			e.known[st.id] = struct{}{}
		}
	}
	return changes
}

// dropFQDNAddr removes an address no pattern holds: its ipcache entry,
// then its identity and the entries allowing it.
func (e *Enforcer) dropFQDNAddr(a netip.Addr, st *fqdnAddr) []policy.Change {
	delete(e.fq.addrs, a)
	if st.id == 0 {
		return nil
	}
	if err := e.cfg.IPCache.DeleteIPCache(netip.PrefixFrom(a, a.BitLen())); err != nil {
		e.fqdnWriteFailed("removing", a, err)
	}
	e.mu.Lock()
	delete(e.identities, st.id)
	e.mu.Unlock()
	delete(e.known, st.id)
	e.fq.free = append(e.fq.free, st.id)
	return e.engine.RemoveIdentity(st.id)
}

// writeFQDNAddrs writes the ipcache entries of the touched addresses that
// still have an identity, and observes how long they waited.
func (e *Enforcer) writeFQDNAddrs(touched []netip.Addr) {
	now := time.Now()
	for _, a := range touched {
		st := e.fq.addrs[a]
		if st == nil || st.id == 0 || st.since.IsZero() {
			continue
		}
		if err := e.cfg.IPCache.UpsertIPCache(netip.PrefixFrom(a, a.BitLen()), datapath.IPCacheEntry{Identity: st.id}); err != nil {
			e.fqdnWriteFailed("writing", a, err)
			continue
		}
		e.fq.latency.Observe(now.Sub(st.since).Seconds())
		st.since = time.Time{}
	}
}

func (e *Enforcer) fqdnWriteFailed(op string, a netip.Addr, err error) {
	e.fq.errors++
	e.fq.lastErr = op + " the ipcache entry of " + a.String() + ": " + err.Error()
	if ok, suppressed := e.loglim.Allow("fqdn ipcache", time.Now()); ok {
		e.log.Error("FQDN address: ipcache write failed", "op", op, "addr", a, "err", err, "suppressed", suppressed)
	}
}

// allocLocal returns a free node-local identity (0: MaxFQDNAddresses are
// in use).
func (e *Enforcer) allocLocal() uint32 {
	f := &e.fq
	if n := len(f.free); n > 0 {
		id := f.free[n-1]
		f.free = f.free[:n-1]
		return id
	}
	if int(f.next) > e.cfg.MaxFQDNAddresses {
		return 0
	}
	id := localIdentityFlag | f.next
	f.next++
	return id
}

// sweepFQDN removes the ipcache entries of node-local identities a
// previous run left (Run starting, before any subscription): this run
// numbers its addresses anew, and an old address must not pass for a new
// one's identity.
func (e *Enforcer) sweepFQDN() {
	if e.cfg.IPCache == nil {
		return
	}
	m, err := e.cfg.IPCache.IPCache()
	if err != nil {
		e.fqdnWriteFailed("listing", netip.Addr{}, err)
		return
	}
	n := 0
	for p, ent := range m {
		if ent.Identity&localIdentityFlag == 0 || ent.Identity > policy.MaxPeerIdentity {
			continue
		}
		if err := e.cfg.IPCache.DeleteIPCache(p); err != nil {
			e.fqdnWriteFailed("removing", p.Addr(), err)
			continue
		}
		n++
	}
	if n > 0 {
		e.log.Info("removed the previous run's ipcache entries of FQDN addresses", "entries", n)
	}
}

// stopFQDN cancels the subscriptions (Run returning).
func (e *Enforcer) stopFQDN() {
	for p, sub := range e.fq.subs {
		sub.cancel()
		delete(e.fq.subs, p)
	}
}
