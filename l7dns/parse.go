package l7dns

import (
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// ParseError is a message refused as malformed, with its reason (one of
// the Reason constants). It wraps ErrMalformed.
type ParseError struct {
	Reason string
	Err    error
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("malformed DNS message (%s): %v", e.Reason, e.Err)
}

// Unwrap is ErrMalformed and the cause.
func (e *ParseError) Unwrap() []error { return []error{ErrMalformed, e.Err} }

func malformed(reason string, format string, args ...any) *ParseError {
	return &ParseError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// ParseQuery decodes a query of at most maxSize bytes: a well-formed
// message (every section within it, as many records as its header counts,
// names without pointer loops), QR clear, opcode QUERY, one question.
func ParseQuery(b []byte, maxSize int) (*dns.Msg, error) {
	m, err := decode(b, maxSize)
	if err != nil {
		return nil, err
	}
	switch {
	case m.Response:
		return nil, malformed(ReasonNotQuery, "a response where a query was expected")
	case m.Opcode != dns.OpcodeQuery:
		return nil, malformed(ReasonNotQuery, "opcode %s, only QUERY is proxied", opcodeString(m.Opcode))
	case len(m.Question) != 1:
		return nil, malformed(ReasonQuestionCount, "%d questions, a query has one", len(m.Question))
	}
	return m, nil
}

// parseResponse decodes a server's answer as ParseQuery a query.
func parseResponse(b []byte, maxSize int) (*dns.Msg, error) {
	m, err := decode(b, maxSize)
	if err != nil {
		return nil, err
	}
	if !m.Response {
		return nil, malformed(ReasonNotQuery, "a query where a response was expected")
	}
	return m, nil
}

func opcodeString(op int) string {
	if s, ok := dns.OpcodeToString[op]; ok {
		return s
	}
	return fmt.Sprintf("%d", op)
}

// decode checks the message's structure itself (miekg/dns forgives a
// message that ends early or counts more records than it has), then
// decodes it with miekg/dns.
func decode(b []byte, maxSize int) (*dns.Msg, error) {
	if len(b) > maxSize {
		return nil, malformed(ReasonTooLarge, "%d bytes, at most %d are accepted", len(b), maxSize)
	}
	if err := walk(b); err != nil {
		return nil, err
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return nil, classify(err)
	}
	return m, nil
}

// walk checks that the header's counts of questions and records are what
// the message holds, each within the message; names are skipped, not
// followed (miekg/dns follows and bounds their pointers).
func walk(b []byte) error {
	const header = 12
	if len(b) < header {
		return malformed(ReasonTruncated, "%d bytes, shorter than a header", len(b))
	}
	counts := [4]int{}
	for i := range counts {
		counts[i] = int(b[4+2*i])<<8 | int(b[5+2*i])
	}
	off := header
	for section, n := range counts {
		for i := 0; i < n; i++ {
			if off == len(b) {
				return malformed(ReasonBadCounts, "the header counts %d records in section %d, the message ends after %d", n, section, i)
			}
			var err error
			if off, err = skipName(b, off); err != nil {
				return err
			}
			fixed := 4 // type, class
			if section > 0 {
				fixed = 10 // type, class, ttl, rdlength
			}
			if off+fixed > len(b) {
				return malformed(ReasonTruncated, "the message ends inside record %d of section %d", i, section)
			}
			if section > 0 {
				off += int(b[off+8])<<8 | int(b[off+9])
			}
			off += fixed
			if off > len(b) {
				return malformed(ReasonTruncated, "the message ends inside the data of record %d of section %d", i, section)
			}
		}
	}
	if off != len(b) {
		return malformed(ReasonBadCounts, "%d bytes after the records the header counts", len(b)-off)
	}
	return nil
}

func skipName(b []byte, off int) (int, error) {
	for {
		if off >= len(b) {
			return 0, malformed(ReasonTruncated, "the message ends inside a name")
		}
		c := int(b[off])
		switch c & 0xC0 {
		case 0x00:
			if c == 0 {
				return off + 1, nil
			}
			off += 1 + c
		case 0xC0:
			if off+2 > len(b) {
				return 0, malformed(ReasonTruncated, "the message ends inside a name pointer")
			}
			return off + 2, nil
		default:
			return 0, malformed(ReasonInvalid, "label type %#x", c&0xC0)
		}
	}
}

func classify(err error) *ParseError {
	s := err.Error()
	switch {
	case strings.Contains(s, "compression pointer"):
		return &ParseError{Reason: ReasonCompressionLoop, Err: err}
	case errors.Is(err, dns.ErrBuf), strings.Contains(s, "overflow"):
		return &ParseError{Reason: ReasonTruncated, Err: err}
	}
	return &ParseError{Reason: ReasonInvalid, Err: err}
}

// matches reports whether answer a is to query q: the same id, and the
// same question (the name compared without case: resolvers may vary it).
func matches(q, a *dns.Msg) error {
	if a.Id != q.Id {
		return fmt.Errorf("%w: id %d, the query's is %d", ErrMismatch, a.Id, q.Id)
	}
	if len(a.Question) != 1 {
		return fmt.Errorf("%w: %d questions", ErrMismatch, len(a.Question))
	}
	aq, qq := a.Question[0], q.Question[0]
	if aq.Qtype != qq.Qtype || aq.Qclass != qq.Qclass || !strings.EqualFold(aq.Name, qq.Name) {
		return fmt.Errorf("%w: question %s, the query's is %s", ErrMismatch, aq.String(), qq.String())
	}
	return nil
}
