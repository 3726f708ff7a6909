package l7dns

import (
	"context"
	"net"
	"net/netip"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// Meta is what the transparent proxy knows of one query's connection.
type Meta struct {
	// Source is the client, Destination the DNS server it asked (the
	// original destination, where allowed queries are forwarded).
	Source, Destination netip.AddrPort
	// SourceIdentity and DestinationIdentity are the security identities
	// of the client and the server.
	SourceIdentity, DestinationIdentity uint32
	// EndpointID is the local endpoint whose policy redirected the query.
	EndpointID uint32
	// Direction is EGRESS when the local endpoint is the client, INGRESS
	// when it is the server.
	Direction flowpb.TrafficDirection
	// Rules are the policy's DNS rules for (endpoint, port, direction);
	// nil allows nothing.
	Rules *Rules
	// Dial connects to Destination over the query's own transport (UDP
	// for a datagram, TCP for a connection): the transparent proxy's
	// upstream dial (from the client's address, with its mark). nil dials
	// Destination with a net.Dialer.
	Dial func(ctx context.Context) (net.Conn, error)
}
