package enforcer

import (
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/l7proxy"
)

// L7Proxy is package l7proxy's proxy as the enforcer's ProxyPorts: a
// Redirect is its RedirectKey (the endpoint's identity as EndpointID), and
// the *PortRules are the redirect's Metadata.Rules.
func L7Proxy(p *l7proxy.Proxy) ProxyPorts { return l7Proxy{p} }

type l7Proxy struct{ p *l7proxy.Proxy }

func l7proxyKey(r Redirect) l7proxy.RedirectKey {
	dir := datapath.Egress
	if r.Ingress {
		dir = datapath.Ingress
	}
	return l7proxy.RedirectKey{EndpointID: r.Endpoint, Port: r.Port, Direction: dir, Parser: r.Parser}
}

// Ensure implements ProxyPorts.
func (x l7Proxy) Ensure(r Redirect, rules *PortRules) (uint16, error) {
	return x.p.Ensure(l7proxyKey(r), rules)
}

// Remove implements ProxyPorts.
func (x l7Proxy) Remove(r Redirect) { x.p.Remove(l7proxyKey(r)) }
