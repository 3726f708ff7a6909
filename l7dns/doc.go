// Package l7dns is the DNS proxy engine: the transparent proxy (package
// l7proxy) hands it a query datagram or a TCP connection with the
// connection's metadata (Meta: the original source and destination, the
// security identities, the direction, the policy's DNS rules), and it
//
//   - parses each query with miekg/dns, refusing malformed ones (truncated,
//     compression loops, wrong counts, oversized) by reason;
//   - checks the query name against the rules' matchName / matchPattern; a
//     denied query gets REFUSED;
//   - forwards an allowed query to the original destination (the real DNS
//     server) and validates the answer (id, question) before relaying it;
//   - puts the answer's A/AAAA addresses (through CNAME chains) into the
//     fqdn cache before the client sees the answer, so that a toFQDNs
//     policy allows an address by the time the client connects to it;
//   - reports every query and answer as Hubble's own L7 flow (l7.dns).
//
// See docs/l7-dns.md.
package l7dns

import "errors"

// The errors of this package; wrapped with what was being done.
var (
	// ErrConfig: an invalid Config field.
	ErrConfig = errors.New("invalid DNS proxy config")
	// ErrMalformed: a message that is not a well-formed DNS message (the
	// reason is in the wrapping error and in the malformed metric).
	ErrMalformed = errors.New("malformed DNS message")
	// ErrMismatch: an answer whose id or question is not the query's.
	ErrMismatch = errors.New("DNS answer does not match the query")
	// ErrOverloaded: the concurrent query limit (Config.MaxConcurrent) or
	// the client's rate (Config.ClientQPS) was reached.
	ErrOverloaded = errors.New("DNS proxy overloaded")
)
