package l7http

import "errors"

// The errors a request or response is refused with. Each has a Reason,
// the label it is counted under (clustermesh_l7_http_refused_total and
// clustermesh_l7_http_upstream_errors_total).
var (
	// ErrMalformed: a request or status line, a header field or a chunk
	// that does not follow RFC 9112.
	ErrMalformed = errors.New("malformed HTTP/1.1 message")
	// ErrHeaderTooLarge: the request line and header fields (or trailer
	// fields, or a response head) exceed Config.MaxHeaderBytes.
	ErrHeaderTooLarge = errors.New("header section larger than the limit (raise MaxHeaderBytes if legitimate)")
	// ErrSmuggling: framing that two parsers could read differently:
	// Content-Length with Transfer-Encoding, conflicting Content-Length
	// values, a Transfer-Encoding other than chunked alone, obs-fold.
	ErrSmuggling = errors.New("ambiguous message framing (request smuggling attempt)")
	// ErrChunk: an invalid chunk size line or a chunk not ended by CRLF.
	ErrChunk = errors.New("invalid chunked encoding")
	// ErrUnsupported: an HTTP version other than 1.0 and 1.1, a request
	// target not in origin form (or * for OPTIONS), CONNECT, an Expect other
	// than 100-continue.
	ErrUnsupported = errors.New("unsupported HTTP/1.1 feature")
	// ErrTimeout: the client or the server was too slow (a header section
	// not complete within HeaderTimeout, a body stalled for ReadTimeout, no
	// response within ResponseTimeout).
	ErrTimeout = errors.New("timed out")
	// ErrUpstream: the original destination could not be reached or sent an
	// invalid response.
	ErrUpstream = errors.New("upstream failed")
	// ErrInvalidRule: an HTTP rule that cannot be compiled (an invalid
	// regular expression, a header match the engine does not support).
	ErrInvalidRule = errors.New("invalid HTTP rule")
	// ErrInvalidConfig: a Config that Validate refuses.
	ErrInvalidConfig = errors.New("invalid l7http configuration")
)

// Internal ends of an exchange, never returned by Serve.
var (
	// errBodyNotSent: the server answered a request with Expect:
	// 100-continue without asking for its body, which the client may still
	// send or not: the connection cannot be reused.
	errBodyNotSent = errors.New("request body not sent: the server answered before 100 Continue")
	// errDrainLimit: a denied request's body is over MaxDrainBytes (the
	// connection closes after the 403).
	errDrainLimit = errors.New("denied request's body over MaxDrainBytes")
)

// refusal is a refused message: the sentinel it wraps, the reason it is
// counted under and the detail logged.
type refusal struct {
	err    error
	reason string
	detail string
}

func (r *refusal) Error() string { return r.err.Error() + ": " + r.detail }
func (r *refusal) Unwrap() error { return r.err }

func refuse(err error, reason, detail string) *refusal {
	return &refusal{err: err, reason: reason, detail: detail}
}
