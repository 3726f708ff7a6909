// Package l7proxy is the agent's transparent proxy front end for L7
// policy: it owns the listeners that the policy programs
// (datapath/tcpolicy) send redirected flows to, and hands each connection
// (TCP) or datagram (UDP) to an L7 engine (a Handler: the HTTP and DNS
// engines) with what the engine needs to judge it (Metadata: the original
// source and destination, both security identities, the local endpoint,
// the direction, the policy's rules for the redirect).
//
// A redirect is one (endpoint, port, direction, parser) of the policy
// (RedirectKey); Ensure gives it a proxy port from a range (stable: the
// same key gets the same port while it is free, across restarts) and
// listens on it, transparently (IP_TRANSPARENT), with TCP and, for engines
// that take datagrams, UDP, in IPv4 and IPv6. The policy writer puts the
// port in the redirect's policy entries (tcpolicy.Key.ProxyPort). The
// proxy installs the policy routing that delivers the packets the programs
// assigned to its sockets (New), limits connections and backs off accept
// errors, and dials upstream from the client's own address with a mark
// that keeps the programs from redirecting an ingress proxy's upstream
// again (Metadata.DialUpstream). Close stops every listener: from then on
// the programs drop the redirected flows (fail closed). See
// docs/l7-redirect.md.
package l7proxy

import "errors"

// Errors of this package.
var (
	// ErrInvalidConfig: a Config field is out of range; the message names
	// it and what to set.
	ErrInvalidConfig = errors.New("invalid l7 proxy configuration")
	// ErrUnknownParser: Ensure got a parser no Config.Handlers entry
	// serves.
	ErrUnknownParser = errors.New("unknown l7 parser")
	// ErrNoPort: every port of the range is taken; widen the range
	// (--l7-proxy-port-min / --l7-proxy-port-max).
	ErrNoPort = errors.New("no free l7 proxy port")
	// ErrClosed: the proxy was closed.
	ErrClosed = errors.New("l7 proxy closed")
	// ErrNoUpstream: the Metadata was not made by a Proxy, so it cannot
	// dial the original destination.
	ErrNoUpstream = errors.New("metadata without an upstream dialer")
	// ErrBadOrigDst: a datagram came without a readable original
	// destination (IP_ORIGDSTADDR); it is dropped and counted.
	ErrBadOrigDst = errors.New("datagram without its original destination")
)
