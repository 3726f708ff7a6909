package meshapiserver

import (
	"maps"
	"net/netip"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// endpointCache remembers the entries each endpoint was published with, so
// that a new state re-encodes only the endpoints that changed: a source
// delivers whole states, and encoding 100,000 endpoints on every change
// would cost the propagation of a single change hundreds of milliseconds.
// Identity numbers never change once allocated, so an endpoint with the
// same labels has the same identity. Owned by the publishing goroutine.
type endpointCache struct {
	gen       uint32
	endpoints map[string]*cachedEndpoint // by namespace/pod
	// identities are the encoded identity entries, by number.
	identities map[uint32]encodedEntry
	// inc is what publishing a change of some endpoints only needs
	// (incremental.go); desired rebuilds it.
	inc incremental
}

// encodedEntry is one key and its encoded value (never modified: the
// publisher compares and sends it as is), and, once a local view needs it
// (withLocal), the key it has there (wire.LocalViewKey: the same value,
// for the cluster's own agents). A mode without a view keeps no view keys.
type encodedEntry struct {
	key, local string
	val        []byte
}

// withLocal returns e with its local view key.
func (e encodedEntry) withLocal() encodedEntry {
	if e.local == "" {
		e.local, _ = wire.LocalViewKey(e.key)
	}
	return e
}

// viewKeys gives ce's entry and its identity's their local view keys.
func (c *endpointCache) viewKeys(ce *cachedEndpoint) {
	if ce.ipcache.local == "" {
		ce.ipcache = ce.ipcache.withLocal()
	}
	if e := c.identities[ce.id]; e.local == "" {
		c.identities[ce.id] = e.withLocal()
	}
}

// cachedEndpoint is one endpoint as last published. labels and nsLabels
// are the source's maps as given (states are not mutated once delivered).
type cachedEndpoint struct {
	gen            uint32
	ip, hostIP     netip.Addr
	labels         map[string]string
	nsLabels       map[string]string
	serviceAccount string
	workload       string
	id             uint32
	ipcache        encodedEntry
}

func newEndpointCache() *endpointCache {
	return &endpointCache{endpoints: map[string]*cachedEndpoint{}, identities: map[uint32]encodedEntry{}}
}

// begin starts the pass over a new state; sweep ends it, forgetting the
// endpoints the state no longer has.
func (c *endpointCache) begin() { c.gen++ }

func (c *endpointCache) sweep() {
	for k, e := range c.endpoints {
		if e.gen != c.gen {
			delete(c.endpoints, k)
		}
	}
}

// lookup returns e's cached entry if e is as it was published (same
// address, node address, labels, namespace labels, service account and
// workload),
// marking it seen.
func (c *endpointCache) lookup(e *statesource.Endpoint, hostIP netip.Addr) (*cachedEndpoint, bool) {
	ce, ok := c.endpoints[e.Namespace+"/"+e.Pod]
	if !ok || ce.ip != e.IP || ce.hostIP != hostIP || ce.serviceAccount != e.ServiceAccount || ce.workload != e.Workload ||
		!maps.Equal(ce.labels, e.Labels) || !maps.Equal(ce.nsLabels, e.NamespaceLabels) {
		return nil, false
	}
	ce.gen = c.gen
	return ce, true
}

// store records e's new entries.
func (c *endpointCache) store(e *statesource.Endpoint, hostIP netip.Addr, id uint32, ipcache encodedEntry) *cachedEndpoint {
	ce := &cachedEndpoint{
		gen: c.gen, ip: e.IP, hostIP: hostIP, labels: e.Labels, nsLabels: e.NamespaceLabels,
		serviceAccount: e.ServiceAccount, workload: e.Workload, id: id, ipcache: ipcache,
	}
	c.endpoints[e.Namespace+"/"+e.Pod] = ce
	return ce
}

// identity returns the encoded entry of identity id, encoding it from ls
// the first time.
func (c *endpointCache) identity(id uint32, ls func() wire.Labels) encodedEntry {
	if e, ok := c.identities[id]; ok {
		return e
	}
	e := encodedEntry{key: wire.IdentityKey(id), val: wire.EncodeIdentity(wire.Identity{ID: id, Labels: ls()})}
	c.identities[id] = e
	return e
}
