package l7http

import (
	"context"
	"net"
	"net/netip"
)

// Direction is the side of the proxied endpoint: Ingress when it is the
// server, Egress when it is the client.
type Direction uint8

// The directions of a redirect.
const (
	Ingress Direction = iota + 1
	Egress
)

// Meta is what the transparent proxy knows of one connection.
type Meta struct {
	// Source is the client's address, Destination the original server's
	// (the address the client connected to).
	Source, Destination netip.AddrPort
	// SourceIdentity and DestinationIdentity are the peers' numeric
	// security identities.
	SourceIdentity, DestinationIdentity uint32
	// EndpointID is the local endpoint's ID (the server for Ingress, the
	// client for Egress).
	EndpointID uint32
	Direction  Direction
	// Policy is the port's HTTP rules; read at every request, so an update
	// applies to open connections from their next request. Nil allows all.
	Policy *Policy
}

// DialFunc connects to the original destination; it must honour ctx.
type DialFunc func(ctx context.Context) (net.Conn, error)
