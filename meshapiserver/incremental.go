package meshapiserver

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// incremental is the bookkeeping that lets a state whose Changes name only
// endpoints be published without walking the whole state: per endpoint what
// it was published with, per identity how many exported endpoints use it,
// per shared global service the endpoints it selects. With a local view
// (a mode that holds endpoints back) every endpoint is also in the view,
// and per identity how many endpoints use it there. The full path
// (desired) rebuilds it; a change updates it in place. Owned by the
// publishing goroutine.
type incremental struct {
	valid    bool
	mode     ExportMode
	view     bool // mode.localView()
	nodeIP   map[string]netip.Addr
	eps      map[string]*incEndpoint // by namespace/pod
	idRefs   map[uint32]int          // identity → exported endpoints using it
	viewRefs map[uint32]int          // identity → endpoints using it (view only)
	// services are the shared global services that select something, each
	// under one pair of its selector (the least key): an endpoint's
	// candidates are those under its own labels' pairs.
	services map[selectorPair][]*incService
	held     int // endpoints not exported
}

// incEndpoint is one endpoint as last published.
type incEndpoint struct {
	ep       *statesource.Endpoint // shared with the states (never modified)
	exported bool
	// id and ip (its ipcache entry's keys) are set when it is published:
	// exported, or in the local view.
	id uint32
	ip encodedEntry
}

// published reports whether ie has entries (exported, or in the view).
func (inc *incremental) published(ie *incEndpoint) bool { return ie.exported || inc.view }

// incService is one shared global service and the endpoints it selects
// (with an address), exported or not.
type incService struct {
	svc     statesource.Service
	members map[string]struct{} // endpoint keys
}

// endpointDelta is what applying a change publishes: entries to write and
// keys to delete (never both for one key).
type endpointDelta struct {
	puts map[string][]byte
	dels map[string]struct{}
}

// rebuild records st as the full path published it: scope is the scope
// desired used, ix st's selector index.
func (inc *incremental) rebuild(st *statesource.State, mode ExportMode, scope *exportScope, ix func() *statesource.SelectorIndex, cache *endpointCache, nodeIP map[string]netip.Addr) {
	*inc = incremental{valid: true, mode: mode, view: mode.localView(), nodeIP: nodeIP,
		eps: make(map[string]*incEndpoint, len(st.Endpoints)), idRefs: map[uint32]int{}, viewRefs: map[uint32]int{},
		services: map[selectorPair][]*incService{}}
	for i := range st.Endpoints {
		e := st.Endpoints[i]
		ie := &incEndpoint{ep: e, exported: scope.exported(e)}
		key := e.Key()
		if !ie.exported {
			inc.held++
		}
		if inc.published(ie) {
			ce := cache.endpoints[key]
			if ce == nil { // the full path stored every endpoint it published
				inc.valid = false
				return
			}
			ie.id, ie.ip = ce.id, ce.ipcache
			inc.count(ie, 1)
		}
		inc.eps[key] = ie
	}
	for i := range st.Services {
		s := &st.Services[i]
		if !s.Shared() {
			continue
		}
		is := &incService{svc: *s, members: map[string]struct{}{}}
		for _, e := range ix().Backends(s) {
			is.members[e.Key()] = struct{}{}
		}
		if len(s.Selector) > 0 { // selects nothing otherwise
			k := slices.Min(slices.Collect(maps.Keys(s.Selector)))
			pair := selectorPair{s.Namespace, k, s.Selector[k]}
			inc.services[pair] = append(inc.services[pair], is)
		}
	}
}

// count adds n to the references of ie's identity (ie is published).
func (inc *incremental) count(ie *incEndpoint, n int) {
	if ie.exported {
		inc.idRefs[ie.id] += n
	}
	if inc.view {
		inc.viewRefs[ie.id] += n
	}
}

// selectorPair is a namespace and one label of a service's selector.
type selectorPair struct{ namespace, key, value string }

// selecting returns the shared services that select e (with an address).
func (inc *incremental) selecting(e *statesource.Endpoint) []*incService {
	if !e.IP.IsValid() {
		return nil
	}
	var out []*incService
	for k, v := range e.Labels {
		for _, is := range inc.services[selectorPair{e.Namespace, k, v}] {
			if is.svc.Selects(e) {
				out = append(out, is)
			}
		}
	}
	return out
}

// exported is exportScope.exported for one endpoint without a whole
// state's scope.
func (inc *incremental) exported(e *statesource.Endpoint) bool {
	if inc.mode == ExportGlobalServices {
		return len(inc.selecting(e)) > 0
	}
	return (&exportScope{mode: inc.mode}).exported(e)
}

// apply publishes a change of endpoints: now holds each changed key's
// endpoint, nil when it went. It updates the bookkeeping and cache and
// returns what to write. On an error the bookkeeping is invalid (the full
// path runs next).
func (inc *incremental) apply(c wire.Cluster, now map[string]*statesource.Endpoint, ids *identityAllocator, cache *endpointCache) (d endpointDelta, allocated bool, err error) {
	d = endpointDelta{puts: map[string][]byte{}, dels: map[string]struct{}{}}
	affected := map[*incService]struct{}{}
	touched := map[uint32]struct{}{}
	inc.valid = false // until done
	for key, e := range now {
		if old := inc.eps[key]; old != nil {
			for _, is := range inc.selecting(old.ep) {
				delete(is.members, key)
				affected[is] = struct{}{}
			}
			if !old.exported {
				inc.held--
			}
			if inc.published(old) {
				inc.count(old, -1)
				touched[old.id] = struct{}{}
				d.delIPCache(old, inc.view)
			}
			delete(inc.eps, key)
		}
		if e == nil {
			delete(cache.endpoints, key)
			continue
		}
		ie := &incEndpoint{ep: e, exported: inc.exported(e)}
		for _, is := range inc.selecting(e) {
			is.members[key] = struct{}{}
			affected[is] = struct{}{}
		}
		if !ie.exported {
			inc.held++
		}
		if inc.published(ie) {
			ce, isNew, err := endpointEntries(c, e, inc.nodeIP[e.Node], ids, cache)
			if err != nil {
				return d, allocated, err
			}
			allocated = allocated || isNew
			if inc.view {
				cache.viewKeys(ce)
			}
			ie.id, ie.ip = ce.id, ce.ipcache
			inc.count(ie, 1)
			touched[ce.id] = struct{}{}
			d.putIPCache(ie, inc.view)
		} else {
			delete(cache.endpoints, key)
		}
		inc.eps[key] = ie
	}
	for id := range touched {
		e := cache.identities[id] // encoded when an endpoint first used it
		d.refs(e, inc.idRefs, id, e.key)
		if inc.view {
			d.refs(e, inc.viewRefs, id, e.local)
		}
	}
	for is := range affected {
		k, v, err := inc.encodeService(c, is)
		if err != nil {
			return d, allocated, err
		}
		d.puts[k] = v
	}
	for k := range d.puts {
		delete(d.dels, k)
	}
	inc.valid = true
	return d, allocated, nil
}

// putIPCache writes ie's ipcache entry: its state key when exported, its
// view key with a view.
func (d endpointDelta) putIPCache(ie *incEndpoint, view bool) {
	if ie.exported {
		d.puts[ie.ip.key] = ie.ip.val
	}
	if view {
		d.puts[ie.ip.local] = ie.ip.val
	}
}

// delIPCache deletes what putIPCache wrote for ie.
func (d endpointDelta) delIPCache(ie *incEndpoint, view bool) {
	if ie.exported {
		d.dels[ie.ip.key] = struct{}{}
	}
	if view {
		d.dels[ie.ip.local] = struct{}{}
	}
}

// refs writes identity entry e under key while refs counts a user of id,
// else deletes it (and forgets the count).
func (d endpointDelta) refs(e encodedEntry, refs map[uint32]int, id uint32, key string) {
	if refs[id] > 0 {
		d.puts[key] = e.val
		return
	}
	delete(refs, id)
	d.dels[key] = struct{}{}
}

// encodeService encodes is with its exported members as backends, as
// desired does with the whole state.
func (inc *incremental) encodeService(c wire.Cluster, is *incService) (string, []byte, error) {
	members := &statesource.State{Endpoints: make([]*statesource.Endpoint, 0, len(is.members))}
	for k := range is.members {
		if ie := inc.eps[k]; ie != nil && ie.exported {
			members.Endpoints = append(members.Endpoints, ie.ep)
		}
	}
	v, err := wire.EncodeService(clusterService(c, statesource.NewSelectorIndex(members), &exportScope{mode: ExportAll}, &is.svc))
	if err != nil {
		return "", nil, fmt.Errorf("encoding service %s/%s: %w", is.svc.Namespace, is.svc.Name, err)
	}
	return wire.ServiceKey(c.Name, is.svc.Namespace, is.svc.Name), v, nil
}

// changedEndpoints returns the endpoints ch names by key, nil for those
// that went, when only endpoints changed; false when the full path must run.
func changedEndpoints(ch *statesource.Changes) (map[string]*statesource.Endpoint, bool) {
	if ch == nil || ch.Nodes || ch.Services || ch.Namespaces {
		return nil, false
	}
	now := make(map[string]*statesource.Endpoint, len(ch.Endpoints)+len(ch.RemovedEndpoints))
	for _, k := range ch.RemovedEndpoints {
		now[k] = nil
	}
	for _, e := range ch.Endpoints {
		now[e.Key()] = e
	}
	return now, true
}

// withMergedChanges returns next, or a copy of it whose Changes also
// cover prev's when prev (delivered before next) was never published.
func withMergedChanges(prev, next *statesource.State) *statesource.State {
	if prev == nil {
		return next
	}
	cp := *next
	cp.Changes = prev.Changes.Then(next.Changes)
	return &cp
}

// desiredChanges is desired for a state whose Changes name only endpoints,
// when the bookkeeping of the state before it is valid: the entries to
// write and delete, whether identities were allocated, how many endpoints
// are held back. ok is false when the full path must run.
func desiredChanges(c wire.Cluster, st *statesource.State, mode ExportMode, ids *identityAllocator, cache *endpointCache) (d endpointDelta, allocated bool, held int, ok bool, err error) {
	now, only := changedEndpoints(st.Changes)
	inc := &cache.inc
	if !only || !inc.valid || inc.mode != mode {
		return d, false, 0, false, nil
	}
	d, allocated, err = inc.apply(c, now, ids, cache)
	if err != nil {
		return d, allocated, 0, false, err
	}
	return d, allocated, inc.held, true, nil
}
