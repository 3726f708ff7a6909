package l7proxy

import (
	"context"
	"net"
	"net/netip"

	"github.com/clustermesh/clustermesh/datapath"
)

// Handler is an L7 engine's part for TCP: it serves one redirected
// connection. It owns conn (the proxy closes it too once ServeConn
// returns) and must return soon after ctx is done (the proxy stopping or
// the redirect removed): the proxy closes conn StopGrace later, but what
// the handler dialed is the handler's to close. It dials the original
// destination, when it lets the connection through, with md.DialUpstream.
type Handler interface {
	ServeConn(ctx context.Context, conn net.Conn, md Metadata)
}

// DatagramHandler is an L7 engine's part for UDP: it serves one
// redirected datagram. Redirects of a parser whose handler is one also
// listen on UDP. d.Payload is the handler's; d.Reply sends a datagram to the
// client from the original destination and may be called until
// ServeDatagram returns.
type DatagramHandler interface {
	ServeDatagram(ctx context.Context, d Datagram)
}

// Datagram is one redirected UDP datagram.
type Datagram struct {
	Payload []byte
	Meta    Metadata
	// Reply sends b to the client (Meta.OrigSrc) from the address it sent
	// the datagram to (Meta.OrigDst).
	Reply func(b []byte) error
}

// Metadata is what the proxy knows of a redirected connection or datagram.
type Metadata struct {
	// OrigSrc is the client, OrigDst the destination it addressed (the
	// proxy socket's local address, kept by the transparent redirect).
	OrigSrc, OrigDst netip.AddrPort
	// SrcIdentity and DstIdentity are the security identities of OrigSrc
	// and OrigDst (Config.Identities: the mesh's ipcache; 2, world, for an
	// address it does not know).
	SrcIdentity, DstIdentity uint32
	// EndpointID is the local endpoint whose policy redirected the flow
	// (RedirectKey.EndpointID): the server for Ingress, the client for
	// Egress.
	EndpointID uint32
	Direction  datapath.Direction
	Protocol   datapath.Protocol // TCP or UDP
	Parser     string            // RedirectKey.Parser
	ProxyPort  uint16
	// Rules are the policy's rules for the redirect, as last given to
	// Ensure (the engine's own type).
	Rules any

	dial func(ctx context.Context, md Metadata) (net.Conn, error)
}

// DialUpstream connects to OrigDst over Protocol, from OrigSrc's address
// (a port of the kernel's choosing) with IP_TRANSPARENT, so that the
// destination and its policy see the client's address and identity, and
// with the mark of the direction's proxy (tcpolicy.MarkFromIngressProxy /
// MarkFromEgressProxy), so that the programs never send it back to the
// proxy it came from. Its replies reach the proxy's socket through the
// programs (docs/l7-redirect.md).
func (md Metadata) DialUpstream(ctx context.Context) (net.Conn, error) {
	if md.dial == nil {
		return nil, ErrNoUpstream
	}
	return md.dial(ctx, md)
}

// WithUpstream returns md dialing upstream with dial: for an engine's
// tests, which make their Metadata without a Proxy.
func (md Metadata) WithUpstream(dial func(ctx context.Context, md Metadata) (net.Conn, error)) Metadata {
	md.dial = dial
	return md
}

// Identities gives the security identity of an address: the mesh's
// ipcache (longest prefix), 2 (world) when it knows none.
type Identities interface {
	IdentityOf(addr netip.Addr) uint32
}

// RedirectKey is one redirect of the policy: the flows of an endpoint to
// (Ingress) or from (Egress) a destination port that an L7 parser
// ("http", "dns", ...) must see.
type RedirectKey struct {
	EndpointID uint32
	Port       uint16
	Direction  datapath.Direction
	Parser     string
}
