package dnsserver

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// FuzzParseZone: any zone text parses or is refused, and a parsed zone
// answers a question about each of its names.
func FuzzParseZone(f *testing.F) {
	f.Add(zoneText)
	f.Add("a IN CNAME b\nb IN CNAME a\n")
	f.Add("$ORIGIN x.\n@ 5 IN AAAA ::1\n")
	f.Fuzz(func(t *testing.T, text string) {
		z, err := ParseZone("east.example.", strings.NewReader(text))
		if err != nil {
			return
		}
		for name := range z {
			for _, qt := range []uint16{dns.TypeA, dns.TypeANY} {
				q := new(dns.Msg)
				q.SetQuestion(name, qt)
				if a := z.Answer(q); a.Rcode != dns.RcodeSuccess {
					t.Fatalf("%s held by the zone answered %s", name, dns.RcodeToString[a.Rcode])
				}
			}
		}
	})
}
