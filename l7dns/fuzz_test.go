package l7dns

import (
	"errors"
	"net"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

func fuzzSeeds(f *testing.F) {
	q := new(dns.Msg)
	q.SetQuestion("checkout.east.example.", dns.TypeA)
	valid, _ := q.Pack()
	q.SetEdns0(4096, true)
	edns, _ := q.Pack()
	a := new(dns.Msg)
	a.SetQuestion("alias.example.", dns.TypeAAAA)
	a.Response = true
	a.Answer = []dns.RR{
		&dns.CNAME{Hdr: dns.RR_Header{Name: "alias.example.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 5}, Target: "x.example."},
		&dns.AAAA{Hdr: dns.RR_Header{Name: "x.example.", Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 7}, AAAA: net.ParseIP("fd00::1")},
	}
	answer, _ := a.Pack()
	for _, b := range [][]byte{valid, edns, answer, valid[:5], valid[:len(valid)-1],
		append(slices.Clone(valid[:12]), 0xC0, 12, 0, 1, 0, 1), append(slices.Clone(valid), 0)} {
		f.Add(b)
	}
}

// FuzzQuery: any bytes are a query, or refused with one of the reasons;
// the proxy's own answers to an accepted query (REFUSED, SERVFAIL) are
// well-formed answers to its question.
func FuzzQuery(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := ParseQuery(b, 65535)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || !slices.Contains(reasons, pe.Reason) || !errors.Is(err, ErrMalformed) {
				t.Fatalf("refused without a reason: %v", err)
			}
			return
		}
		if len(q.Question) != 1 || q.Response {
			t.Fatalf("accepted %v", q)
		}
		out := reply(q, dns.RcodeRefused)
		a, err := parseResponse(out, 65535)
		if err != nil {
			t.Fatalf("our REFUSED does not parse: %v", err)
		}
		if err := matches(q, a); err != nil && len(a.Question) != 0 {
			t.Fatalf("our REFUSED is not the query's answer: %v", err)
		}
	})
}

// FuzzAnswer: any bytes are an answer read for flows and the cache, or
// refused with a reason.
func FuzzAnswer(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := parseResponse(b, 65535)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || !slices.Contains(reasons, pe.Reason) {
				t.Fatalf("refused without a reason: %v", err)
			}
			return
		}
		if len(a.Question) != 1 {
			return
		}
		info := readAnswer(a, a)
		for _, ni := range info.names {
			if len(ni.ips) == 0 {
				t.Fatalf("a cached name without addresses: %+v", info)
			}
		}
		_ = info.record(a, a)
	})
}
