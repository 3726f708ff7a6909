package enforcer

import (
	"net/netip"

	"github.com/clustermesh/clustermesh/datapath"
)

// What the enforcer needs of the L7 pieces, kept small so the agent wires
// them (node): the proxy's listener ports (package l7proxy), the addresses
// DNS answers gave for names (package fqdn's cache) and the ipcache the
// addresses' identities are written to (the mesh maps, datapath.Writer).

// ProxyPorts gives the ports of the agent's transparent proxy listeners.
type ProxyPorts interface {
	// ProxyPort returns the port of the listener for parser ("http" or
	// "dns") in a direction (ingress: the proxied endpoint is the server),
	// opening it on first use; the same port every later call. An error
	// leaves the entries that need it unwritten (fail closed) and is
	// retried.
	ProxyPort(parser string, ingress bool) (uint16, error)
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
// are written (a /32 or /128 each); datapath.Writer is one.
type IPCache interface {
	UpsertIPCache(prefix netip.Prefix, e datapath.IPCacheEntry) error
	DeleteIPCache(prefix netip.Prefix) error
}
