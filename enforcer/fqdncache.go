package enforcer

import (
	"net/netip"

	"github.com/clustermesh/clustermesh/fqdn"
)

// FQDNCache is package fqdn's cache as the enforcer's FQDNSource: a
// pattern (policy.FQDNPattern) is subscribed as a matchPattern, which
// selects what the matchName or matchPattern it came from selects.
func FQDNCache(c *fqdn.Cache) FQDNSource { return fqdnCache{c} }

type fqdnCache struct{ c *fqdn.Cache }

// Subscribe implements FQDNSource.
func (f fqdnCache) Subscribe(pattern string, fn func(added, removed []netip.Addr)) (func(), error) {
	return f.c.Subscribe(fqdn.Selector{MatchPattern: pattern}, func(ch fqdn.Change) { fn(ch.Added, ch.Removed) })
}
