package podnet

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// Dial connects to addr over network from p's network namespace (a socket
// stays in the namespace it was made in, whichever thread uses it later).
func (p *Pod) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := InNetns(p.NS, func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// HTTPClient is an HTTP client whose connections are opened from p, one
// kept alive per host between requests; requests time out after 5 s.
func (p *Pod) HTTPClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1, DialContext: p.Dial}}
}

// Resolver asks the DNS server at server over network ("udp" or "tcp")
// from p.
func (p *Pod) Resolver(network string, server netip.AddrPort) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return p.Dial(ctx, network, server.String())
	}}
}
