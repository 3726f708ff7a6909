package fqdn

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	cases := []struct {
		sel  Selector
		yes  []string
		no   []string
		fail error
	}{
		{sel: Selector{MatchName: "Example.COM"},
			yes: []string{"example.com", "example.com.", "EXAMPLE.com."},
			no:  []string{"www.example.com", "example.co", "example.com.."}},
		{sel: Selector{MatchName: "example.com."}, yes: []string{"example.com"}},
		{sel: Selector{MatchPattern: "*"},
			yes: []string{"example.com", "a.b.c.", ".", "x_y-z.io"},
			no:  []string{"a..b.", "a b.c", `a\.b.c`}},
		{sel: Selector{MatchPattern: "**."}, yes: []string{"a.b"}},
		{sel: Selector{MatchPattern: "*.example.com"},
			yes: []string{"www.example.com", "WWW.example.com.", ".example.com"},
			no:  []string{"example.com", "a.b.example.com", "www.example.org"}},
		{sel: Selector{MatchPattern: "**.example.com"},
			yes: []string{"a.example.com", "a.b.example.com."},
			no:  []string{"example.com", ".example.com", "a..example.com"}},
		{sel: Selector{MatchPattern: "api-*.svc.*.local"},
			yes: []string{"api-.svc.x.local", "api-v1.svc.cluster.local"},
			no:  []string{"api.svc.x.local", "api-v1.svc.a.b.local"}},
		{sel: Selector{MatchPattern: "a*b*c.io"},
			yes: []string{"abc.io", "axxbyyc.io", "abbbc.io"},
			no:  []string{"ab.io", "abcd.io", "a.b.c.io"}},
		{sel: Selector{}, fail: ErrEmptySelector},
		{sel: Selector{MatchName: "a", MatchPattern: "b"}, fail: ErrBothSet},
		{sel: Selector{MatchName: "*.example.com"}, fail: ErrBadChars},
		{sel: Selector{MatchPattern: "a b"}, fail: ErrBadChars},
		{sel: Selector{MatchName: strings.Repeat("a", 255)}, fail: ErrTooLong},
	}
	for _, c := range cases {
		m, err := Compile(c.sel)
		if !errors.Is(err, c.fail) {
			t.Fatalf("%v: compile error %v, want %v", c.sel, err, c.fail)
		}
		if err != nil {
			continue
		}
		for _, n := range c.yes {
			if !m.Match(n) {
				t.Errorf("%v does not match %q", c.sel, n)
			}
		}
		for _, n := range c.no {
			if m.Match(n) {
				t.Errorf("%v matches %q", c.sel, n)
			}
		}
	}
}

func TestMatchAllocs(t *testing.T) {
	m, err := Compile(Selector{MatchPattern: "**.api-*.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { m.Match("a.b.api-v1.Example.com.") }); n != 0 {
		t.Fatalf("Match allocates %v times", n)
	}
}

// ciliumRegexp is Cilium v1.20's translation of a selector into a regular
// expression (pkg/policy/api FQDNSelector.ToRegex with pkg/fqdn/matchpattern),
// the oracle of FuzzPattern.
func ciliumRegexp(s Selector) (*regexp.Regexp, bool) {
	const chars = "[-a-zA-Z0-9_]"
	fqdn := func(s string) string {
		if isFQDN(s) {
			return strings.ToLower(s)
		}
		return strings.ToLower(s) + "."
	}
	if s.MatchName != "" && s.MatchPattern != "" || s.MatchName == "" && s.MatchPattern == "" {
		return nil, false
	}
	if s.MatchName != "" && !regexp.MustCompile(`^[-a-zA-Z0-9_.]+$`).MatchString(s.MatchName) {
		return nil, false
	}
	wild := regexp.MustCompile(`^[*]{1,}[.]?$`)
	p := s.MatchPattern
	if s.MatchName != "" {
		p = fqdn(s.MatchName)
	} else if !wild.MatchString(p) {
		p = fqdn(p)
	}
	if len(strings.TrimSpace(p)) > 255 || !regexp.MustCompile(`^[-a-zA-Z0-9_.*]+$`).MatchString(p) {
		return nil, false
	}
	p = strings.ToLower(strings.TrimSpace(p))
	if wild.MatchString(p) {
		return regexp.MustCompile("(^(" + chars + "+[.])+$)|(^[.]$)"), true
	}
	p = strings.ReplaceAll(p, ".", "[.]")
	p = regexp.MustCompile(`^[*]{2,}\[\.\]`).ReplaceAllString(p, "("+chars+"+([.]"+chars+"+){0,})[.]")
	p = regexp.MustCompile("[*]{1,}").ReplaceAllString(p, chars+"*")
	return regexp.MustCompile("^" + p + "$"), true
}

// FuzzPattern compiles selectors and matches names against Cilium's own
// translation into regular expressions: the same selectors are refused,
// the same names match.
func FuzzPattern(f *testing.F) {
	for _, s := range []struct{ name, pattern, q string }{
		{"", "*", "a.b."}, {"", "*.example.com", "www.example.com"}, {"", "**.example.com", "a.b.example.com"},
		{"example.com", "", "EXAMPLE.com."}, {"", "a*b*c", "axbyc"}, {"", "**", ".."}, {"", "***.a.*", "b.c.a.d."},
		{"", "a..b", "a..b."}, {"x", "y", "x"}, {"", "", ""}, {"", "*.", `a\.b.`},
	} {
		f.Add(s.name, s.pattern, s.q)
	}
	f.Fuzz(func(t *testing.T, name, pattern, q string) {
		sel := Selector{MatchName: name, MatchPattern: pattern}
		m, err := Compile(sel)
		re, ok := ciliumRegexp(sel)
		if (err == nil) != ok {
			t.Fatalf("%v: compile error %v, Cilium accepts: %v", sel, err, ok)
		}
		if err != nil {
			return
		}
		for i := 0; i < len(q); i++ {
			if q[i] >= 0x80 {
				return // Cilium lower-cases with Unicode; DNS presentation format is ASCII
			}
		}
		want := re.MatchString(fqdnOfLower(q))
		if got := m.Match(q); got != want {
			t.Fatalf("%v (%s) on %q: got %v, Cilium %v", sel, re, q, got, want)
		}
	})
}

func fqdnOfLower(s string) string {
	if !isFQDN(s) {
		s += "."
	}
	return strings.ToLower(s)
}

func BenchmarkMatch(b *testing.B) {
	m, err := Compile(Selector{MatchPattern: "**.api-*.example.com"})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !m.Match("a.b.api-v1.example.com.") {
			b.Fatal("no match")
		}
	}
}
