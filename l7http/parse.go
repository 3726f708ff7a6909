package l7http

import (
	"bufio"
	"errors"
	"io"
	"strconv"
	"strings"
)

// The parser is strict (RFC 9112, with the recipient choices that close
// request smuggling): lines end with CRLF, field names are tokens followed
// directly by ':', no obs-fold, no control characters in values, one Host,
// Content-Length digits only and never beside Transfer-Encoding, and
// Transfer-Encoding only "chunked" alone. What the parser accepts is
// forwarded re-serialized from the parsed form, so the server reads the
// message exactly as the policy did.

// header is one header field as received (name case kept).
type header struct{ name, value string }

// requestHead is a parsed request line and header section.
type requestHead struct {
	method, target, proto string
	headers               []header
	host                  string
	contentLength         int64 // with chunked false; 0 when absent
	chunked               bool
	expectContinue        bool
	close                 bool // the connection ends after this exchange
}

func (r *requestHead) hasBody() bool { return r.chunked || r.contentLength > 0 }

// hasHeader reports whether the request has a field name (case-insensitive)
// with value (any value when nil).
func (r *requestHead) hasHeader(name string, value *string) bool {
	for _, h := range r.headers {
		if strings.EqualFold(h.name, name) && (value == nil || h.value == *value) {
			return true
		}
	}
	return false
}

// responseHead is a parsed status line and header section.
type responseHead struct {
	proto   string
	code    int
	reason  string
	headers []header
	body    bodyKind
	length  int64 // with body == bodyLength
	close   bool
}

type bodyKind uint8

const (
	bodyNone bodyKind = iota
	bodyLength
	bodyChunked
	bodyUntilClose
)

// lineReader reads CRLF-terminated lines within a byte budget.
type lineReader struct {
	br      *bufio.Reader
	budget  int
	scratch []byte // lines longer than br's buffer
}

// line returns the next line without its CRLF, valid until the next call.
func (l *lineReader) line() ([]byte, error) {
	acc := l.scratch[:0]
	long := false
	for {
		s, err := l.br.ReadSlice('\n')
		l.budget -= len(s)
		if l.budget < 0 {
			return nil, refuse(ErrHeaderTooLarge, "header_too_large", "header section over the limit")
		}
		if err == bufio.ErrBufferFull {
			acc, long = append(acc, s...), true
			continue
		}
		if err != nil {
			if err == io.EOF && (len(s) > 0 || long) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if long {
			acc = append(acc, s...)
			l.scratch, s = acc, acc
		}
		if len(s) < 2 || s[len(s)-2] != '\r' {
			return nil, refuse(ErrMalformed, "bare_lf", "a line ends with LF without CR")
		}
		return s[:len(s)-2], nil
	}
}

// readFields reads header (or trailer) fields up to the empty line.
func (l *lineReader) readFields(dst []header) ([]header, error) {
	for {
		line, err := l.line()
		if err != nil {
			return dst, err
		}
		if len(line) == 0 {
			return dst, nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return dst, refuse(ErrSmuggling, "obs_fold", "a header line starts with whitespace (obs-fold)")
		}
		colon := strings.IndexByte(string(line), ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return dst, refuse(ErrMalformed, "header_name", "a header line has no valid field name before ':'")
		}
		value := trimOWS(line[colon+1:])
		if !validValue(value) {
			return dst, refuse(ErrMalformed, "header_value", "a header value has control characters")
		}
		dst = append(dst, header{name: string(line[:colon]), value: string(value)})
	}
}

// parseRequestHead reads one request head. The head is returned, partly
// filled, with an error too (for the error's flow).
func parseRequestHead(br *bufio.Reader, maxBytes int, scratch *[]byte) (*requestHead, error) {
	l := lineReader{br: br, budget: maxBytes, scratch: *scratch}
	defer func() { *scratch = l.scratch }()
	req := &requestHead{}
	line, err := l.line()
	for i := 0; err == nil && len(line) == 0 && i < 4; i++ { // RFC 9112 2.2: empty lines before a request
		line, err = l.line()
	}
	if err != nil {
		return req, err
	}
	if err := req.parseRequestLine(line); err != nil {
		return req, err
	}
	if req.headers, err = l.readFields(make([]header, 0, 16)); err != nil {
		return req, err
	}
	return req, req.frame()
}

func (r *requestHead) parseRequestLine(line []byte) error {
	method, rest, ok1 := strings.Cut(string(line), " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !isToken([]byte(method)) {
		return refuse(ErrMalformed, "request_line", "the request line is not method SP target SP version")
	}
	r.method, r.target = method, target
	if proto != "HTTP/1.1" && proto != "HTTP/1.0" {
		return refuse(ErrUnsupported, "version", "only HTTP/1.1 and HTTP/1.0 are proxied")
	}
	r.proto = proto
	if !validTarget(target) {
		return refuse(ErrMalformed, "target", "the request target has characters outside visible ASCII")
	}
	switch {
	case method == "CONNECT":
		return refuse(ErrUnsupported, "connect", "CONNECT is not proxied")
	case target == "*" && method == "OPTIONS":
		return nil
	case target[0] != '/':
		return refuse(ErrUnsupported, "target_form", "only origin-form targets (/path) are proxied")
	}
	t, err := normalizeTarget(target)
	r.target = t
	return err
}

// normalizeTarget normalizes the path of an origin-form target as Cilium's
// Envoy does by default (--http-normalize-path): percent-encodings checked,
// unreserved characters decoded (the others' hex upper-cased), slashes
// merged, dot segments removed (RFC 3986 6.2.2, 5.2.4); an escaped slash
// (%2F, %5C) is refused. The rules match, and the server gets, the
// normalized target, so "/public/%2e%2e/admin" is judged as the "/admin"
// the server would serve. The query is kept as it is.
func normalizeTarget(target string) (string, error) {
	path, query, hasQuery := strings.Cut(target, "?")
	if !strings.Contains(path, "%") && !strings.Contains(path, "/.") && !strings.Contains(path, "//") {
		return target, nil
	}
	const upperHex = "0123456789ABCDEF"
	b := make([]byte, 0, len(target))
	for i := 0; i < len(path); i++ {
		c := path[i]
		if c != '%' {
			if c != '/' || len(b) == 0 || b[len(b)-1] != '/' { // merge slashes
				b = append(b, c)
			}
			continue
		}
		if i+2 >= len(path) || !isHex(path[i+1]) || !isHex(path[i+2]) {
			return target, refuse(ErrMalformed, "target", "a '%' in the path not followed by two hex digits")
		}
		v := unhex(path[i+1])<<4 | unhex(path[i+2])
		switch {
		case v == '/' || v == '\\':
			return target, refuse(ErrMalformed, "escaped_slash", "an escaped slash (%2F, %5C) in the path")
		case isUnreserved(v):
			b = append(b, v)
		default:
			b = append(b, '%', upperHex[v>>4], upperHex[v&15])
		}
		i += 2
	}
	out := removeDotSegments(string(b))
	if hasQuery {
		out += "?" + query
	}
	return out, nil
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func isUnreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// removeDotSegments is RFC 3986 5.2.4 on an absolute path.
func removeDotSegments(p string) string {
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, s)
			continue
		}
		if last {
			out = append(out, "")
		}
	}
	return "/" + strings.Join(out, "/")
}

// frame reads the request's framing and connection fields, refusing the
// ambiguous ones, and strips Upgrade (never tunnelled).
func (r *requestHead) frame() error {
	var f framing
	hosts := 0
	upgrade := false
	for _, h := range r.headers {
		if err := f.field(h); err != nil {
			return err
		}
		switch {
		case strings.EqualFold(h.name, "Host"):
			hosts++
			r.host = h.value
		case strings.EqualFold(h.name, "Expect"):
			if !strings.EqualFold(h.value, "100-continue") {
				return refuse(ErrUnsupported, "expect", "Expect other than 100-continue")
			}
			r.expectContinue = true
		case strings.EqualFold(h.name, "Upgrade"), strings.EqualFold(h.name, "HTTP2-Settings"):
			upgrade = true
		}
	}
	if hosts > 1 || (hosts == 0 && r.proto == "HTTP/1.1") || !validHost(r.host) {
		return refuse(ErrMalformed, "host", "an HTTP/1.1 request needs exactly one valid Host")
	}
	if f.chunked && r.proto == "HTTP/1.0" {
		return refuse(ErrSmuggling, "transfer_encoding", "Transfer-Encoding in an HTTP/1.0 request")
	}
	r.chunked, r.contentLength = f.chunked, f.length
	if f.lengthSeen {
		r.headers = canonicalLength(r.headers, f.length)
	}
	r.close = f.close || (r.proto == "HTTP/1.0" && !f.keepAlive)
	if !r.hasBody() {
		r.expectContinue = false
	}
	if upgrade {
		r.headers = stripUpgrade(r.headers)
	}
	return nil
}

// framing accumulates the fields that frame a message.
type framing struct {
	length               int64
	lengthSeen, chunked  bool
	close, keepAlive     bool
	transferEncodingSeen bool
}

func (f *framing) field(h header) error {
	switch {
	case strings.EqualFold(h.name, "Content-Length"):
		for v := range strings.SplitSeq(h.value, ",") {
			n, err := parseLength(string(trimOWS([]byte(v))))
			if err != nil {
				return err
			}
			if f.lengthSeen && n != f.length {
				return refuse(ErrSmuggling, "content_length_conflict", "conflicting Content-Length values")
			}
			f.length, f.lengthSeen = n, true
		}
	case strings.EqualFold(h.name, "Transfer-Encoding"):
		if f.transferEncodingSeen || !strings.EqualFold(h.value, "chunked") {
			return refuse(ErrSmuggling, "transfer_encoding", "Transfer-Encoding other than one chunked")
		}
		f.transferEncodingSeen, f.chunked = true, true
	case strings.EqualFold(h.name, "Connection"):
		for tok := range strings.SplitSeq(h.value, ",") {
			tok = string(trimOWS([]byte(tok)))
			f.close = f.close || strings.EqualFold(tok, "close")
			f.keepAlive = f.keepAlive || strings.EqualFold(tok, "keep-alive")
		}
	}
	if f.chunked && f.lengthSeen {
		return refuse(ErrSmuggling, "content_length_and_chunked", "both Content-Length and Transfer-Encoding")
	}
	return nil
}

func parseLength(s string) (int64, error) {
	if s == "" || len(s) > 18 {
		return 0, refuse(ErrSmuggling, "content_length", "Content-Length is not 1 to 18 digits")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, refuse(ErrSmuggling, "content_length", "Content-Length is not 1 to 18 digits")
		}
	}
	n, _ := strconv.ParseInt(s, 10, 64)
	return n, nil
}

// canonicalLength leaves one Content-Length field of n (a list of equal
// values, or several equal fields, which RFC 9112 lets a recipient accept,
// are forwarded as the one value every parser reads alike).
func canonicalLength(hs []header, n int64) []header {
	v := strconv.FormatInt(n, 10)
	out, seen := hs[:0], false
	for _, h := range hs {
		if strings.EqualFold(h.name, "Content-Length") {
			if seen {
				continue
			}
			h.value, seen = v, true
		}
		out = append(out, h)
	}
	return out
}

// stripUpgrade removes Upgrade and HTTP2-Settings, and their tokens from
// Connection: the server answers in HTTP/1.1 (h2c clients fall back,
// WebSocket handshakes fail).
func stripUpgrade(hs []header) []header {
	out := hs[:0]
	for _, h := range hs {
		switch {
		case strings.EqualFold(h.name, "Upgrade"), strings.EqualFold(h.name, "HTTP2-Settings"):
			continue
		case strings.EqualFold(h.name, "Connection"):
			var keep []string
			for tok := range strings.SplitSeq(h.value, ",") {
				tok = string(trimOWS([]byte(tok)))
				if tok != "" && !strings.EqualFold(tok, "upgrade") && !strings.EqualFold(tok, "http2-settings") {
					keep = append(keep, tok)
				}
			}
			if len(keep) == 0 {
				continue
			}
			h.value = strings.Join(keep, ", ")
		}
		out = append(out, h)
	}
	return out
}

// parseResponseHead reads one response head; method is the request's (a
// HEAD response has no body).
func parseResponseHead(br *bufio.Reader, maxBytes int, scratch *[]byte, method string) (*responseHead, error) {
	l := lineReader{br: br, budget: maxBytes, scratch: *scratch}
	defer func() { *scratch = l.scratch }()
	line, err := l.line()
	if err != nil {
		return nil, err
	}
	resp := &responseHead{}
	if err := resp.parseStatusLine(line); err != nil {
		return nil, err
	}
	if resp.headers, err = l.readFields(make([]header, 0, 16)); err != nil {
		return nil, err
	}
	return resp, resp.frame(method)
}

func (r *responseHead) parseStatusLine(line []byte) error {
	s := string(line)
	proto, rest, _ := strings.Cut(s, " ")
	code, reason, _ := strings.Cut(rest, " ")
	if proto != "HTTP/1.1" && proto != "HTTP/1.0" {
		return refuse(ErrUpstream, "upstream_malformed", "status line with an unsupported version")
	}
	if len(code) != 3 || code[0] < '1' || code[0] > '5' || code[1] < '0' || code[1] > '9' || code[2] < '0' || code[2] > '9' || !validValue([]byte(reason)) {
		return refuse(ErrUpstream, "upstream_malformed", "status line without a valid code")
	}
	r.proto, r.reason = proto, reason
	r.code = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	return nil
}

func (r *responseHead) frame(method string) error {
	var f framing
	for _, h := range r.headers {
		if err := f.field(h); err != nil {
			var rf *refusal
			if errors.As(err, &rf) {
				return refuse(ErrUpstream, "upstream_malformed", "response framing: "+rf.detail)
			}
			return err
		}
	}
	r.close = f.close || (r.proto == "HTTP/1.0" && !f.keepAlive)
	switch {
	case r.code == 101:
		return refuse(ErrUpstream, "upstream_upgrade", "101 Switching Protocols to a request whose Upgrade was removed")
	case r.code < 200, r.code == 204, r.code == 304, method == "HEAD":
		r.body = bodyNone
	case f.chunked:
		r.body = bodyChunked
	case f.lengthSeen:
		r.body, r.length = bodyLength, f.length
		r.headers = canonicalLength(r.headers, f.length)
	default:
		r.body, r.close = bodyUntilClose, true
	}
	return nil
}

func isTokenChar(c byte) bool {
	if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !isTokenChar(c) {
			return false
		}
	}
	return true
}

// validValue: field content is visible characters, SP, HTAB and obs-text.
func validValue(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

func validTarget(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// validHost: a Host value has no whitespace, '/', '\\', '@' or controls
// (uri-host [":" port], loosely).
func validHost(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= 0x20 || c >= 0x7f || c == '/' || c == '\\' || c == '@' {
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// writeRequestHead serializes req (request line, fields, empty line).
func writeRequestHead(w *bufio.Writer, req *requestHead) {
	w.WriteString(req.method)
	w.WriteByte(' ')
	w.WriteString(req.target)
	w.WriteByte(' ')
	w.WriteString(req.proto)
	w.WriteString("\r\n")
	writeFields(w, req.headers)
}

// writeResponseHead serializes resp.
func writeResponseHead(w *bufio.Writer, resp *responseHead) {
	w.WriteString(resp.proto)
	w.WriteByte(' ')
	var code [3]byte
	w.Write(strconv.AppendInt(code[:0], int64(resp.code), 10))
	w.WriteByte(' ')
	w.WriteString(resp.reason)
	w.WriteString("\r\n")
	writeFields(w, resp.headers)
}

func writeFields(w *bufio.Writer, hs []header) {
	for _, h := range hs {
		w.WriteString(h.name)
		w.WriteString(": ")
		w.WriteString(h.value)
		w.WriteString("\r\n")
	}
	w.WriteString("\r\n")
}
