// Package l7http is the HTTP/1.1 engine of the agent's transparent L7 proxy:
// given a client connection the proxy accepted, its metadata (original
// source and destination, security identities, endpoint, direction, the
// port's HTTP rules) and a dialer to the original destination, it parses
// every request strictly, applies the port's rules (method, path, host and
// header matches, as CiliumNetworkPolicy's `rules.http`), forwards allowed
// requests and their responses with streamed bodies, answers denied ones
// with Cilium's `403 Access denied` and keeps the connection, refuses
// malformed and smuggling requests with a 400 and closes, and reports every
// request and response as a Hubble L7 flow (`flowpb.Flow` with `l7.http`).
//
// It owns the parsing (request and response heads, chunked bodies), the
// rules' compiled form (Policy), the limits and timeouts of a connection
// (Config) and its metrics. It does not listen, find original destinations
// or allocate proxy ports: l7proxy does, and calls Proxy.Serve per
// connection. See docs/l7-http.md.
package l7http
