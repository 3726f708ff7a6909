package enforcer

import (
	"fmt"
	"net/netip"

	"github.com/clustermesh/clustermesh/datapath"
)

// What the enforcer needs of the L7 pieces, kept small so the agent wires
// them (node): the proxy's listener ports (package l7proxy), the addresses
// DNS answers gave for names (package fqdn's cache) and the ipcache the
// addresses' identities are written to (the mesh maps, datapath.Writer).

// ProxyPorts are the agent's transparent proxy's redirects (l7proxy's
// Proxy, through L7Proxy).
type ProxyPorts interface {
	// Ensure opens (or keeps) the listener of redirect r and returns its
	// port, stable while r lives; rules answer the L7 policy of each peer,
	// live (they follow the policy without another call). An error leaves
	// the entries that need r unwritten (fail closed) and is retried.
	Ensure(r Redirect, rules *PortRules) (uint16, error)
	// Remove closes r's listener: no entry uses it any more.
	Remove(r Redirect)
}

// Redirect is one listener of the proxy: the traffic of a local endpoint
// (its identity) to (Ingress) or from (egress) destination port Port (the
// first port of a range), parsed by Parser ("http" or "dns"; DNS on UDP
// and TCP alike).
type Redirect struct {
	Endpoint uint32
	Port     uint16
	Ingress  bool
	Parser   string
}

func (r Redirect) String() string {
	dir := "egress"
	if r.Ingress {
		dir = "ingress"
	}
	return fmt.Sprintf("%d %s %d %s", r.Endpoint, dir, r.Port, r.Parser)
}

// FQDNSource tells the addresses that allowed DNS answers gave for names.
type FQDNSource interface {
	// Subscribe calls fn with every change of the addresses the names
	// pattern matches hold (a policy.FQDNPattern: a name, or a pattern with
	// "*"; "*" alone is every name), first, before it returns, with those
	// they hold now. An address is removed when the last such name stops
	// holding it (its TTL ended). fn must not block nor call the source;
	// cancel stops the calls.
	Subscribe(pattern string, fn func(added, removed []netip.Addr)) (cancel func(), err error)
}

// IPCache is where the node-local identities of FQDN-selected addresses
// are written (a /32 or /128 each): datapath.Maps and datapath.Memory.
type IPCache interface {
	UpsertIPCache(prefix netip.Prefix, e datapath.IPCacheEntry) error
	DeleteIPCache(prefix netip.Prefix) error
	// IPCache lists the entries (read once at start, to remove the
	// node-local ones a previous run left).
	IPCache() (map[netip.Prefix]datapath.IPCacheEntry, error)
}
