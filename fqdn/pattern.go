package fqdn

import (
	"fmt"
	"strings"
)

// MaxNameLength is the longest matchName or matchPattern, with its
// trailing dot (Cilium's MaxFQDNLength).
const MaxNameLength = 255

// Selector selects DNS names as Cilium's FQDNSelector and PortRuleDNS do,
// with their JSON fields. Exactly one field is set.
type Selector struct {
	// MatchName is one name, compared without case, with or without its
	// trailing dot.
	MatchName string `json:"matchName,omitempty"`
	// MatchPattern is a name where "*" stands for any run of DNS
	// characters (letters, digits, '-', '_') within one label; "*" alone
	// selects every name; a leading "**." stands for one or more whole
	// labels ("**.example.com" selects a.example.com and a.b.example.com,
	// not example.com).
	MatchPattern string `json:"matchPattern,omitempty"`
}

// String is the selector as policy writes it.
func (s Selector) String() string {
	if s.MatchName != "" {
		return "matchName: " + s.MatchName
	}
	return "matchPattern: " + s.MatchPattern
}

type matchKind uint8

const (
	kindName matchKind = iota
	kindAll
	kindPattern
)

// Matcher is a compiled Selector. Safe for concurrent use.
type Matcher struct {
	sel       Selector
	kind      matchKind
	name      string   // kindName: lower-case, with its trailing dot
	subdomain bool     // kindPattern: a leading "**." (one or more labels)
	labels    []string // kindPattern: the labels after it, lower-case, the last one "" (the root)
}

// Compile checks s as Cilium does and compiles it.
func Compile(s Selector) (*Matcher, error) {
	m, err := compile(s)
	if err != nil {
		return nil, fmt.Errorf("fqdn selector %q: %w", s.String(), err)
	}
	return m, nil
}

func compile(s Selector) (*Matcher, error) {
	switch {
	case s.MatchName == "" && s.MatchPattern == "":
		return nil, ErrEmptySelector
	case s.MatchName != "" && s.MatchPattern != "":
		return nil, ErrBothSet
	case s.MatchName != "":
		name := Normalize(s.MatchName)
		if len(name) > MaxNameLength {
			return nil, ErrTooLong
		}
		if !validChars(name, false) {
			return nil, ErrBadChars
		}
		return &Matcher{sel: s, kind: kindName, name: name}, nil
	}
	p := s.MatchPattern
	if onlyStars(p) {
		return &Matcher{sel: s, kind: kindAll}, nil
	}
	p = Normalize(p)
	if len(p) > MaxNameLength {
		return nil, ErrTooLong
	}
	if !validChars(p, true) {
		return nil, ErrBadChars
	}
	m := &Matcher{sel: s, kind: kindPattern}
	if i := strings.IndexFunc(p, func(r rune) bool { return r != '*' }); i >= 2 && p[i] == '.' {
		m.subdomain, p = true, p[i+1:]
	}
	m.labels = strings.Split(p, ".")
	for i, l := range m.labels {
		m.labels[i] = collapseStars(l)
	}
	return m, nil
}

// Selector is the selector m was compiled from.
func (m *Matcher) Selector() Selector { return m.sel }

// Match reports whether m selects name (any case, with or without its
// trailing dot, in DNS presentation format as miekg/dns writes it). It does
// not allocate for a name with its trailing dot.
func (m *Matcher) Match(name string) bool {
	if !isFQDN(name) {
		name += "."
	}
	switch m.kind {
	case kindName:
		return equalFold(name, m.name)
	case kindAll:
		return name == "." || dnsLabels(name[:len(name)-1])
	}
	rest := name
	for i := len(m.labels) - 1; i >= 0; i-- {
		var label string
		if i == 0 && !m.subdomain {
			if strings.IndexByte(rest, '.') >= 0 {
				return false
			}
			label, rest = rest, ""
		} else {
			j := strings.LastIndexByte(rest, '.')
			if j < 0 {
				return false
			}
			label, rest = rest[j+1:], rest[:j]
		}
		if !globLabel(m.labels[i], label) {
			return false
		}
	}
	if m.subdomain {
		return dnsLabels(rest)
	}
	return true
}

// Normalize is name as policy compares it: ASCII lower case, with its
// trailing dot.
func Normalize(name string) string {
	lower := true
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			lower = false
			break
		}
	}
	if !lower {
		b := []byte(name)
		for i, c := range b {
			if 'A' <= c && c <= 'Z' {
				b[i] = c + 'a' - 'A'
			}
		}
		name = string(b)
	}
	if !isFQDN(name) {
		name += "."
	}
	return name
}

// isFQDN reports whether s ends with a dot that is not escaped.
func isFQDN(s string) bool {
	if s == "" || s[len(s)-1] != '.' {
		return false
	}
	s = s[:len(s)-1]
	n := 0
	for n < len(s) && s[len(s)-1-n] == '\\' {
		n++
	}
	return n%2 == 0
}

func isDNSChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

func validChars(s string, star bool) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isDNSChar(c) && c != '.' && (!star || c != '*') {
			return false
		}
	}
	return true
}

func onlyStars(p string) bool {
	p = strings.TrimSuffix(p, ".")
	return p != "" && strings.Trim(p, "*") == ""
}

func collapseStars(l string) string {
	for strings.Contains(l, "**") {
		l = strings.ReplaceAll(l, "**", "*")
	}
	return l
}

// dnsLabels reports whether s is one or more non-empty labels of DNS
// characters separated by dots.
func dnsLabels(s string) bool {
	if s == "" {
		return false
	}
	prev := byte('.')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '.' && prev == '.' || c != '.' && !isDNSChar(c) {
			return false
		}
		prev = c
	}
	return prev != '.'
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func equalFold(a, lower string) bool {
	if len(a) != len(lower) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lowerASCII(a[i]) != lower[i] {
			return false
		}
	}
	return true
}

// globLabel matches one label against a lower-case pattern label where "*"
// is any run of DNS characters. Pattern literals are DNS characters, so a
// label with any other character never matches one with a star.
func globLabel(p, s string) bool {
	if strings.IndexByte(p, '*') < 0 {
		return equalFold(s, p)
	}
	for i := 0; i < len(s); i++ {
		if !isDNSChar(s[i]) {
			return false
		}
	}
	// The classic single-backtrack glob: correct as every character of s
	// may be taken by a star.
	pi, si, star, mark := 0, 0, -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case pi < len(p) && p[pi] == lowerASCII(s[si]):
			pi++
			si++
		case star >= 0:
			mark++
			pi, si = star+1, mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
