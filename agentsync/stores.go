package agentsync

import (
	"fmt"
	"net/netip"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/wire"
)

// batchStore is a kindStore that can defer its merges to the end of a list
// page, so that the datapath gets one batch per page.
type batchStore interface {
	begin()
	flush()
}

func newStore(r *remote, k wire.Kind) kindStore {
	switch k {
	case wire.IPCache:
		return &ipcacheStore{r: r, gens: map[netip.Prefix]uint32{}}
	case wire.Services:
		return &serviceStore{r: r, entries: map[string]serviceEntry{}}
	case wire.Nodes:
		return &nodeStore{r: r, entries: map[string]nodeEntry{}}
	case wire.Identities:
		return &identityStore{r: r, entries: map[uint32]identityEntry{}}
	}
	panic(fmt.Sprintf("agentsync: no store for kind %v", k))
}

// ipcacheStore keeps the prefixes a remote claims; the claims themselves
// live in the merger. Keys and prefixes are one-to-one (wire rejects
// non-canonical keys), so only the prefix is kept: this is the bulk of a
// remote's entries and its memory matters.
type ipcacheStore struct {
	r    *remote
	gens map[netip.Prefix]uint32

	batching bool
	pending  []ipClaimUpdate
}

func (s *ipcacheStore) apply(key string, value []byte, gen uint32) error {
	c := s.r.cluster()
	p, err := wire.DecodeIPIdentityPair(c, key, value)
	if err != nil {
		return err
	}
	pfx := p.Prefix()
	if s.r.agent.merger.overlapsLocal(pfx) {
		return fmt.Errorf("agentsync: ipcache %q: %s %w", key, pfx, ErrOverlapsLocal)
	}
	s.gens[pfx] = gen
	u := ipClaimUpdate{prefix: pfx, entry: &datapath.IPCacheEntry{Identity: p.ID, TunnelEndpoint: p.HostIP, ClusterID: uint16(c.ID)}}
	if s.batching {
		s.pending = append(s.pending, u)
		return nil
	}
	s.r.agent.merger.setIPs(uint16(c.ID), []ipClaimUpdate{u})
	return nil
}

func (s *ipcacheStore) begin() { s.batching, s.pending = true, s.pending[:0] }

func (s *ipcacheStore) flush() {
	if len(s.pending) > 0 {
		s.r.agent.merger.setIPs(uint16(s.r.cluster().ID), s.pending)
	}
	s.batching, s.pending = false, s.pending[:0]
}

func (s *ipcacheStore) prefixOf(key string) (netip.Prefix, bool) {
	pk, err := wire.ParseKey(wire.IPCache, s.r.name, key)
	if err != nil {
		return netip.Prefix{}, false
	}
	p, err := wire.ParseIPCacheKeySuffix(pk.Name)
	return p, err == nil
}

func (s *ipcacheStore) touch(key string, gen uint32) {
	if p, ok := s.prefixOf(key); ok {
		if _, known := s.gens[p]; known {
			s.gens[p] = gen
		}
	}
}

func (s *ipcacheStore) remove(key string) {
	if p, ok := s.prefixOf(key); ok {
		s.removePrefix(p)
	}
}

func (s *ipcacheStore) removePrefix(p netip.Prefix) {
	if _, known := s.gens[p]; !known {
		return
	}
	delete(s.gens, p)
	s.r.agent.merger.setIPs(uint16(s.r.cluster().ID), []ipClaimUpdate{{prefix: p}})
}

func (s *ipcacheStore) sweep(gen uint32) int {
	var gone []ipClaimUpdate
	for p, g := range s.gens {
		if g < gen {
			delete(s.gens, p)
			gone = append(gone, ipClaimUpdate{prefix: p})
		}
	}
	if len(gone) > 0 {
		s.r.agent.merger.setIPs(uint16(s.r.cluster().ID), gone)
	}
	return len(gone)
}

func (s *ipcacheStore) count() int { return len(s.gens) }
func (s *ipcacheStore) clear()     { s.gens = map[netip.Prefix]uint32{} }

// serviceStore keeps a remote's global services by key.
type serviceStore struct {
	r       *remote
	entries map[string]serviceEntry
}

type serviceEntry struct {
	name svcName
	gen  uint32
}

func (s *serviceStore) apply(key string, value []byte, gen uint32) error {
	c := s.r.cluster()
	svc, err := wire.DecodeService(c, key, value)
	if err != nil {
		return err
	}
	n := svcName{svc.Namespace, svc.Name}
	s.entries[key] = serviceEntry{name: n, gen: gen}
	s.r.agent.merger.setRemoteService(s.r.name, n, toRemoteService(c, svc))
	return nil
}

func (s *serviceStore) touch(key string, gen uint32) {
	if e, ok := s.entries[key]; ok {
		e.gen = gen
		s.entries[key] = e
	}
}

func (s *serviceStore) remove(key string) {
	if e, ok := s.entries[key]; ok {
		delete(s.entries, key)
		s.r.agent.merger.setRemoteService(s.r.name, e.name, nil)
	}
}

func (s *serviceStore) sweep(gen uint32) int {
	n := 0
	for key, e := range s.entries {
		if e.gen < gen {
			s.remove(key)
			n++
		}
	}
	return n
}

func (s *serviceStore) count() int { return len(s.entries) }
func (s *serviceStore) clear()     { s.entries = map[string]serviceEntry{} }

// nodeStore keeps a remote's nodes (for status, and for WireGuard peers).
type nodeStore struct {
	r       *remote
	entries map[string]nodeEntry
}

type nodeEntry struct {
	node *wire.Node
	gen  uint32
}

func (s *nodeStore) apply(key string, value []byte, gen uint32) error {
	n, err := wire.DecodeNode(s.r.cluster(), key, value)
	if err != nil {
		return err
	}
	s.entries[key] = nodeEntry{node: n, gen: gen}
	s.r.agent.nodesDirty.Store(true)
	return nil
}

func (s *nodeStore) touch(key string, gen uint32) {
	if e, ok := s.entries[key]; ok {
		e.gen = gen
		s.entries[key] = e
	}
}

func (s *nodeStore) remove(key string) {
	if _, ok := s.entries[key]; ok {
		delete(s.entries, key)
		s.r.agent.nodesDirty.Store(true)
	}
}

func (s *nodeStore) sweep(gen uint32) int {
	n := 0
	for key, e := range s.entries {
		if e.gen < gen {
			s.remove(key)
			n++
		}
	}
	return n
}

func (s *nodeStore) count() int { return len(s.entries) }

func (s *nodeStore) clear() {
	s.entries = map[string]nodeEntry{}
	s.r.agent.nodesDirty.Store(true)
}

// identityStore keeps a remote's identities and their labels (for policy).
type identityStore struct {
	r       *remote
	entries map[uint32]identityEntry
}

type identityEntry struct {
	labels wire.Labels
	gen    uint32
}

func (s *identityStore) apply(key string, value []byte, gen uint32) error {
	id, err := wire.DecodeIdentity(s.r.cluster(), key, value)
	if err != nil {
		return err
	}
	s.entries[id.ID] = identityEntry{labels: id.Labels, gen: gen}
	return nil
}

func (s *identityStore) idOf(key string) (uint32, bool) {
	pk, err := wire.ParseKey(wire.Identities, s.r.name, key)
	return pk.ID, err == nil
}

func (s *identityStore) touch(key string, gen uint32) {
	if id, ok := s.idOf(key); ok {
		if e, known := s.entries[id]; known {
			e.gen = gen
			s.entries[id] = e
		}
	}
}

func (s *identityStore) remove(key string) {
	if id, ok := s.idOf(key); ok {
		delete(s.entries, id)
	}
}

func (s *identityStore) sweep(gen uint32) int {
	n := 0
	for id, e := range s.entries {
		if e.gen < gen {
			delete(s.entries, id)
			n++
		}
	}
	return n
}

func (s *identityStore) count() int { return len(s.entries) }
func (s *identityStore) clear()     { s.entries = map[uint32]identityEntry{} }

// toRemoteService converts a remote's global service into backends per port
// name. A service the remote does not share contributes no backends.
func toRemoteService(c wire.Cluster, s *wire.ClusterService) *remoteService {
	rs := &remoteService{clusterID: uint16(c.ID), backends: map[string][]datapath.Backend{}}
	if !s.Shared {
		return rs
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
			rs.backends[portName] = append(rs.backends[portName], datapath.Backend{
				Addr: addr.Unmap(), Port: l4.Port, Protocol: proto, ClusterID: uint16(c.ID)})
		}
	}
	return rs
}
