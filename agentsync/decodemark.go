package agentsync

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"unique"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/merge"
	"github.com/clustermesh/clustermesh/wire"
)

// batchStore is a kindStore that can defer its merges to the end of a list
// page, so that the datapath gets one batch per page.
type batchStore interface {
	begin()
	flush()
}

func newStore(r *remote, k wire.Kind) kindStore {
	if f := r.agent.cfg.Forward; f != nil {
		return newForwardStore(r, k, f)
	}
	switch k {
	case wire.IPCache:
		return &ipcacheStore{r: r, entries: newPrefixMap()}
	case wire.Services:
		return &serviceStore{r: r, entries: genMap[string, merge.ServiceName]{}}
	case wire.Nodes:
		return &nodeStore{r: r, entries: genMap[string, *wire.Node]{}}
	case wire.Identities:
		return &identityStore{r: r, entries: genMap[uint32, wire.Labels]{}}
	}
	panic(fmt.Sprintf("agentsync: no store for kind %v", k))
}

// genMap holds a store's entries, each with the generation of the list (or
// watch) that last saw it: the marks of mark-and-sweep.
type genMap[K comparable, V any] map[K]genEntry[V]

type genEntry[V any] struct {
	v   V
	gen uint32
}

func (m genMap[K, V]) put(k K, v V, gen uint32) { m[k] = genEntry[V]{v, gen} }

// touch moves a known key to gen.
func (m genMap[K, V]) touch(k K, gen uint32) {
	if e, ok := m[k]; ok {
		e.gen = gen
		m[k] = e
	}
}

// older returns the keys last seen before gen.
func (m genMap[K, V]) older(gen uint32) []K {
	var out []K
	for k, e := range m {
		if e.gen < gen {
			out = append(out, k)
		}
	}
	return out
}

// ipcacheStore keeps the prefixes a remote claims, with their pod's name
// (for flows); the claims themselves live in the merger. Keys and prefixes
// are one-to-one (wire rejects non-canonical keys), so only the prefix is
// kept: this is the bulk of a remote's entries and its memory matters.
type ipcacheStore struct {
	r       *remote
	entries prefixMap
	names   nameArena

	batching bool
	pending  []merge.IPUpdate
}

func (s *ipcacheStore) apply(key string, value []byte, gen uint32) error {
	c := s.r.cluster()
	p, err := wire.DecodeIPIdentityPair(c, key, value)
	if err != nil {
		return err
	}
	pfx := p.Prefix()
	if !s.r.self && s.r.out.OverlapsLocal(pfx) {
		return fmt.Errorf("ipcache %q: %s %w", key, pfx, ErrOverlapsLocal)
	}
	var name podRef
	if pfx.IsSingleIP() {
		var w wire.Workload
		if p.Workload != "" {
			w, _ = wire.ParseWorkload(p.Workload) // checked by the decoder
		}
		name = s.names.add(p.K8sNamespace, p.K8sPodName, w)
	}
	if old, ok := s.entries.get(pfx); ok {
		s.names.free(old)
	}
	s.entries.put(pfx, name, gen)
	s.claim(merge.IPUpdate{Prefix: pfx, Entry: &datapath.IPCacheEntry{Identity: p.ID, TunnelEndpoint: p.HostIP, ClusterID: uint16(c.ID)}})
	return nil
}

// claim merges u now, or at flush while batching (updates keep their
// order: a put then a delete of one prefix in a batch ends deleted).
func (s *ipcacheStore) claim(u merge.IPUpdate) {
	if s.batching {
		s.pending = append(s.pending, u)
		return
	}
	s.r.out.SetIPs(uint16(s.r.cluster().ID), []merge.IPUpdate{u})
}

func (s *ipcacheStore) begin() { s.batching, s.pending = true, s.pending[:0] }

func (s *ipcacheStore) flush() {
	s.compactNames()
	if len(s.pending) > 0 {
		s.r.out.SetIPs(uint16(s.r.cluster().ID), s.pending)
	}
	// Dropped, not kept for the next page: a page-sized buffer per remote
	// and the entries it points at would stay on the heap for as long as
	// the remote is connected.
	s.batching, s.pending = false, nil
}

func (s *ipcacheStore) prefixOf(key string) (netip.Prefix, bool) {
	pk, err := wire.ParseKey(wire.IPCache, s.r.name, key)
	return pk.Prefix, err == nil
}

func (s *ipcacheStore) touch(key string, gen uint32) {
	if p, ok := s.prefixOf(key); ok {
		s.entries.touch(p, gen)
	}
}

func (s *ipcacheStore) remove(key string) {
	if p, ok := s.prefixOf(key); ok {
		if ref, known := s.entries.get(p); known {
			s.names.free(ref)
			s.entries.del(p)
			s.compactNames()
			s.claim(merge.IPUpdate{Prefix: p})
		}
	}
}

func (s *ipcacheStore) sweep(gen uint32) int {
	old := s.entries.older(gen)
	gone := make([]merge.IPUpdate, len(old))
	for i, p := range old {
		ref, _ := s.entries.get(p)
		s.names.free(ref)
		s.entries.del(p)
		gone[i] = merge.IPUpdate{Prefix: p}
	}
	s.compactNames()
	s.names.trim() // the end of a list: the arena's append slack is not kept
	if len(gone) > 0 {
		s.r.out.SetIPs(uint16(s.r.cluster().ID), gone)
	}
	return len(gone)
}

func (s *ipcacheStore) count() int { return s.entries.len() }

func (s *ipcacheStore) has(key string) bool {
	p, ok := s.prefixOf(key)
	if ok {
		_, ok = s.entries.get(p)
	}
	return ok
}
func (s *ipcacheStore) clear() {
	s.entries, s.names = newPrefixMap(), nameArena{}
}

// podName is the name of the pod at addr, when its entry named one.
func (s *ipcacheStore) podName(addr netip.Addr) (PodName, bool) {
	addr = addr.Unmap()
	ref, _ := s.entries.get(netip.PrefixFrom(addr, addr.BitLen()))
	return s.names.get(ref)
}

// compactNames rebuilds the names' arena when most of it is garbage.
func (s *ipcacheStore) compactNames() {
	if !s.names.wasteful() {
		return
	}
	var fresh nameArena
	s.entries.rewriteRefs(func(r podRef) podRef {
		if n, ok := s.names.get(r); ok {
			return fresh.add(n.Namespace, n.Name, n.Workload)
		}
		return 0
	})
	s.names = fresh
}

// serviceStore keeps a remote's global services by key. A service whose
// update was refused is withdrawn (its backends leave the merged state)
// until a valid value comes.
type serviceStore struct {
	r         *remote
	entries   genMap[string, merge.ServiceName]
	withdrawn map[string]string // key → why its last update was refused
}

func (s *serviceStore) apply(key string, value []byte, gen uint32) error {
	c := s.r.cluster()
	svc, err := wire.DecodeService(c, key, value)
	if err != nil {
		return err
	}
	n := merge.ServiceName{Namespace: svc.Namespace, Name: svc.Name}
	s.entries.put(key, n, gen)
	delete(s.withdrawn, key)
	s.r.out.SetRemoteService(s.r.name, n, merge.NewRemoteService(c, svc))
	return nil
}

func (s *serviceStore) refuse(key, reason string) {
	e, ok := s.entries[key]
	if !ok {
		return
	}
	if s.withdrawn == nil {
		s.withdrawn = map[string]string{}
	}
	if _, already := s.withdrawn[key]; !already {
		s.r.log.Warn("an update of a remote service was refused: its backends from this cluster are withdrawn until a valid one comes",
			"service", e.v.String(), "reason", reason)
	}
	s.withdrawn[key] = reason
	s.r.out.SetRemoteService(s.r.name, e.v, nil)
}

func (s *serviceStore) touch(key string, gen uint32) { s.entries.touch(key, gen) }

func (s *serviceStore) remove(key string) {
	if e, ok := s.entries[key]; ok {
		delete(s.entries, key)
		delete(s.withdrawn, key)
		s.r.out.SetRemoteService(s.r.name, e.v, nil)
	}
}

func (s *serviceStore) sweep(gen uint32) int { return sweepWith(s.entries.older(gen), s.remove) }
func (s *serviceStore) count() int           { return len(s.entries) }
func (s *serviceStore) has(key string) bool  { _, ok := s.entries[key]; return ok }

func (s *serviceStore) clear() {
	s.entries = genMap[string, merge.ServiceName]{}
	s.withdrawn = nil
}

// withdrawnServices lists the services withdrawn after a refused update.
func (s *serviceStore) withdrawnServices() []WithdrawnService {
	out := make([]WithdrawnService, 0, len(s.withdrawn))
	for key, reason := range s.withdrawn {
		out = append(out, WithdrawnService{Service: s.entries[key].v.String(), Reason: reason})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out
}

// nodeStore keeps a remote's nodes (for status, for WireGuard peers, and
// for the address ranges the cluster owns: ownership.go). Range changes are
// handed to the merger once per page or watch response.
type nodeStore struct {
	r       *remote
	entries genMap[string, *wire.Node]

	batching       bool
	removed, added []netip.Prefix
}

func (s *nodeStore) apply(key string, value []byte, gen uint32) error {
	n, err := wire.DecodeNode(s.r.cluster(), key, value)
	if err != nil {
		return err
	}
	if old, ok := s.entries[key]; ok {
		s.removed = append(s.removed, merge.NodeRanges(old.v)...)
	}
	s.entries.put(key, n, gen)
	s.added = append(s.added, merge.NodeRanges(n)...)
	s.r.nodesChanged()
	s.flushUnlessBatching()
	return nil
}

func (s *nodeStore) touch(key string, gen uint32) { s.entries.touch(key, gen) }

func (s *nodeStore) remove(key string) {
	if old, ok := s.entries[key]; ok {
		delete(s.entries, key)
		s.removed = append(s.removed, merge.NodeRanges(old.v)...)
		s.r.nodesChanged()
		s.flushUnlessBatching()
	}
}

func (s *nodeStore) begin() { s.batching = true }

func (s *nodeStore) flush() {
	s.batching = false
	s.flushUnlessBatching()
}

// flushUnlessBatching hands the range changes to the merger (the local
// cluster's own apiserver owns its addresses without them).
func (s *nodeStore) flushUnlessBatching() {
	if s.batching || (len(s.removed) == 0 && len(s.added) == 0) {
		return
	}
	if !s.r.self {
		s.r.out.SetNodeRanges(uint16(s.r.cluster().ID), s.removed, s.added)
	}
	s.removed, s.added = s.removed[:0], s.added[:0]
}

func (s *nodeStore) sweep(gen uint32) int {
	s.begin()
	defer s.flush()
	return sweepWith(s.entries.older(gen), s.remove)
}

func (s *nodeStore) count() int { return len(s.entries) }

func (s *nodeStore) has(key string) bool { _, ok := s.entries[key]; return ok }

// clear forgets every node; the merger already dropped the cluster and
// its ranges.
func (s *nodeStore) clear() {
	s.entries = genMap[string, *wire.Node]{}
	s.removed, s.added = nil, nil
	s.r.nodesChanged()
}

// identityStore keeps a remote's identities and their labels, and tells
// the agent's IdentityObserver (policy) about every change.
type identityStore struct {
	r       *remote
	entries genMap[uint32, wire.Labels]
}

func (s *identityStore) apply(key string, value []byte, gen uint32) error {
	id, err := wire.DecodeIdentity(s.r.cluster(), key, value)
	if err != nil {
		return err
	}
	id.Labels = internLabels(id.Labels)
	old, known := s.entries[id.ID]
	s.entries.put(id.ID, id.Labels, gen)
	if o := s.r.identities; o != nil && (!known || !slices.Equal(old.v, id.Labels)) {
		o.UpsertIdentity(s.r.name, id.ID, id.Labels)
	}
	return nil
}

func (s *identityStore) idOf(key string) (uint32, bool) {
	pk, err := wire.ParseKey(wire.Identities, s.r.name, key)
	return pk.ID, err == nil
}

func (s *identityStore) touch(key string, gen uint32) {
	if id, ok := s.idOf(key); ok {
		s.entries.touch(id, gen)
	}
}

func (s *identityStore) remove(key string) {
	if id, ok := s.idOf(key); ok {
		s.delete(id)
	}
}

func (s *identityStore) delete(id uint32) {
	if _, ok := s.entries[id]; !ok {
		return
	}
	delete(s.entries, id)
	if o := s.r.identities; o != nil {
		o.DeleteIdentity(s.r.name, id)
	}
}

func (s *identityStore) sweep(gen uint32) int {
	return sweepWith(s.entries.older(gen), s.delete)
}

func (s *identityStore) count() int { return len(s.entries) }

func (s *identityStore) has(key string) bool {
	id, ok := s.idOf(key)
	if ok {
		_, ok = s.entries[id]
	}
	return ok
}

func (s *identityStore) clear() {
	for id := range s.entries {
		s.delete(id)
	}
}

// internLabels returns ls with its strings interned: parsed, they are
// substrings of the entry's value, which every label would keep alive, and
// most labels (their keys, the label sets a workload repeats in every
// cluster) are the same in many identities of many remotes. ls is changed
// in place.
func internLabels(ls wire.Labels) wire.Labels {
	for i, l := range ls {
		ls[i] = wire.Label{Source: unique.Make(l.Source).Value(), Key: unique.Make(l.Key).Value(), Value: unique.Make(l.Value).Value()}
	}
	return ls
}

// sweepWith removes each key with remove; it returns how many.
func sweepWith[K any](keys []K, remove func(K)) int {
	for _, k := range keys {
		remove(k)
	}
	return len(keys)
}
