package agentsync

import (
	"hash/maphash"

	"github.com/clustermesh/clustermesh/wire"
)

// Forwarding: the receiving side of the agent (sessions, cluster config and
// cluster-id pinning, canaries, list+watch, validation with the per-remote
// limits, mark-and-sweep) handing what it accepted to a ForwardSink instead
// of the merge. A kvstoremesh cache is an Agent with Config.Forward: it
// writes what it is handed into its own cluster's etcd.

// ForwardSink receives every remote's accepted entries, as the remote
// published them, in the order they were accepted. Calls come from the
// remotes' goroutines with their kind's lock held: an implementation
// queues and returns (it must not block on I/O nor call back into the
// Agent).
type ForwardSink interface {
	// Connected: a session with remote read its cluster config raw (valid)
	// and admitted it; entries follow.
	Connected(remote string, raw []byte)
	// Upsert: remote holds key (its state key) of kind k with value, which
	// passed validation.
	Upsert(remote string, k wire.Kind, key string, value []byte)
	// Delete: remote no longer holds key (a watched delete, or the sweep
	// after a list).
	Delete(remote string, k wire.Kind, key string)
	// Listed: a complete list of remote's kind k was handed over, and
	// the sweep of what it no longer has: what was handed of k is now
	// all of it.
	Listed(remote string, k wire.Kind)
	// Drained: remote was disconnected for good (its config removed) or
	// came back with another cluster id: nothing it said holds any more.
	Drained(remote string)
}

// forwardStore keeps only the keys of one remote's kind, each with a hash
// of the value last handed over (for the marks of mark-and-sweep, the
// limits, and to hand over only what changed), and hands every accepted
// entry to the sink. Entries are validated by the same wire decoders as
// the agent's stores.
type forwardStore struct {
	r       *remote
	kind    wire.Kind
	sink    ForwardSink
	seed    maphash.Seed
	entries genMap[string, uint64]
}

// notForwarded is the hash of a key the sink does not hold (its last
// update was refused and it was withdrawn).
const notForwarded = 0

func newForwardStore(r *remote, k wire.Kind, sink ForwardSink) *forwardStore {
	return &forwardStore{r: r, kind: k, sink: sink, seed: maphash.MakeSeed(), entries: genMap[string, uint64]{}}
}

// apply validates the entry and hands it over, unless the sink already
// has this very value (a relist after a reconnect rewrites nothing).
func (s *forwardStore) apply(key string, value []byte, gen uint32) error {
	if err := s.validate(key, value); err != nil {
		return err
	}
	h := maphash.Bytes(s.seed, value) | 1 // never notForwarded
	old, known := s.entries[key]
	s.entries.put(key, h, gen)
	if !known || old.v != h {
		s.sink.Upsert(s.r.name, s.kind, key, value)
	}
	return nil
}

// validate decodes the entry as the agent's store of its kind would.
func (s *forwardStore) validate(key string, value []byte) error {
	c := s.r.cluster()
	var err error
	switch s.kind {
	case wire.Nodes:
		_, err = wire.DecodeNode(c, key, value)
	case wire.Identities:
		_, err = wire.DecodeIdentity(c, key, value)
	case wire.IPCache:
		_, err = wire.DecodeIPIdentityPair(c, key, value)
	case wire.Services:
		_, err = wire.DecodeService(c, key, value)
	}
	return err
}

func (s *forwardStore) touch(key string, gen uint32) { s.entries.touch(key, gen) }

// refuse: a refused update of a service takes it out of the cache (its
// readers withdraw its backends, as an agent reading the remote directly
// does); other kinds keep their last valid value. The key stays marked, so
// that a valid value puts it back.
func (s *forwardStore) refuse(key, _ string) {
	if e, ok := s.entries[key]; ok && s.kind == wire.Services && e.v != notForwarded {
		s.sink.Delete(s.r.name, s.kind, key)
		e.v = notForwarded
		s.entries[key] = e
	}
}

func (s *forwardStore) remove(key string) {
	if _, ok := s.entries[key]; ok {
		delete(s.entries, key)
		s.sink.Delete(s.r.name, s.kind, key)
	}
}

func (s *forwardStore) sweep(gen uint32) int { return sweepWith(s.entries.older(gen), s.remove) }
func (s *forwardStore) count() int           { return len(s.entries) }
func (s *forwardStore) has(key string) bool  { _, ok := s.entries[key]; return ok }

// clear forgets every key; the sink was told Drained.
func (s *forwardStore) clear() { s.entries = genMap[string, uint64]{} }
