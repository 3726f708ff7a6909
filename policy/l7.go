package policy

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// L7Rules are the application-protocol rules of one toPorts entry (Cilium's
// L7Rules): exactly one of HTTP and DNS. A present list with an empty rule
// (`http: [{}]`) allows every request and only makes the port visible.
type L7Rules struct {
	HTTP []PortRuleHTTP `json:"http,omitempty"`
	DNS  []PortRuleDNS  `json:"dns,omitempty"`
}

// PortRuleHTTP is one allowed kind of HTTP request (Cilium's PortRuleHTTP):
// every field set must match. Path, Method and Host are regular
// expressions matched against the whole value; Headers are "Name" (present)
// or "Name: value" (present with that value).
type PortRuleHTTP struct {
	Path          string         `json:"path,omitempty"`
	Method        string         `json:"method,omitempty"`
	Host          string         `json:"host,omitempty"`
	Headers       []string       `json:"headers,omitempty"`
	HeaderMatches []*HeaderMatch `json:"headerMatches,omitempty"`
}

// HeaderMatch requires a header with an exact value (Cilium's HeaderMatch
// without secrets: Mismatch "" (deny) or LOG only).
type HeaderMatch struct {
	Mismatch string `json:"mismatch,omitempty"`
	Name     string `json:"name"`
	Value    string `json:"value,omitempty"`
}

// PortRuleDNS is one allowed kind of DNS query (Cilium's PortRuleDNS):
// a name (matchName) or a pattern (matchPattern, with "*" wildcards).
type PortRuleDNS struct {
	MatchName    string `json:"matchName,omitempty"`
	MatchPattern string `json:"matchPattern,omitempty"`
}

// FQDNSelector selects the addresses DNS answers gave for a name or a
// pattern (Cilium's FQDNSelector, in toFQDNs).
type FQDNSelector struct {
	MatchName    string `json:"matchName,omitempty"`
	MatchPattern string `json:"matchPattern,omitempty"`
}

// L7Parser is the application protocol a port's traffic is parsed as.
type L7Parser uint8

// The parsers.
const (
	ParserNone L7Parser = iota
	ParserHTTP
	ParserDNS
)

func (p L7Parser) String() string {
	switch p {
	case ParserHTTP:
		return "http"
	case ParserDNS:
		return "dns"
	}
	return "none"
}

// L7Policy is what the proxy enforces for one allowed entry (local endpoint,
// peer, direction, port): the parser and the requests it allows. A request
// passes when any rule matches; an empty HTTP rule, or the DNS pattern "*",
// allows everything (an L3/L4 rule covering the same traffic adds one, see
// docs/policy.md). Values are shared and never modified once built.
type L7Policy struct {
	Parser L7Parser
	HTTP   []PortRuleHTTP
	DNS    []PortRuleDNS
	key    string // canonical form, for equality
}

// Equal reports whether two policies allow the same (nil: no L7 policy).
func (p *L7Policy) Equal(o *L7Policy) bool {
	if p == nil || o == nil {
		return p == o
	}
	return p.key == o.key
}

// AllowsAll reports whether the policy has a wildcard rule.
func (p *L7Policy) AllowsAll() bool {
	for _, r := range p.HTTP {
		if r.Path == "" && r.Method == "" && r.Host == "" && len(r.Headers) == 0 && len(r.HeaderMatches) == 0 {
			return true
		}
	}
	return slices.ContainsFunc(p.DNS, func(r PortRuleDNS) bool { return r.MatchPattern == "*" })
}

func (p *L7Policy) String() string {
	if p == nil {
		return "none"
	}
	return p.key
}

func (r PortRuleHTTP) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "{method=%q path=%q host=%q headers=%q", r.Method, r.Path, r.Host, r.Headers)
	for _, m := range r.HeaderMatches {
		fmt.Fprintf(&b, " match=%q:%q/%s", m.Name, m.Value, m.Mismatch)
	}
	b.WriteString("}")
	return b.String()
}

func (r PortRuleDNS) String() string {
	if r.MatchName != "" {
		return "{name=" + r.MatchName + "}"
	}
	return "{pattern=" + r.MatchPattern + "}"
}

// newL7Policy builds the canonical policy of rules: sorted, without
// duplicates.
func newL7Policy(parser L7Parser, http []PortRuleHTTP, dns []PortRuleDNS) *L7Policy {
	p := &L7Policy{Parser: parser}
	var parts []string
	switch parser {
	case ParserHTTP:
		seen := map[string]bool{}
		for _, r := range http {
			if s := r.String(); !seen[s] {
				seen[s] = true
				p.HTTP = append(p.HTTP, r)
			}
		}
		slices.SortFunc(p.HTTP, func(a, b PortRuleHTTP) int { return cmp.Compare(a.String(), b.String()) })
		for _, r := range p.HTTP {
			parts = append(parts, r.String())
		}
	case ParserDNS:
		seen := map[PortRuleDNS]bool{}
		for _, r := range dns {
			if !seen[r] {
				seen[r] = true
				p.DNS = append(p.DNS, r)
			}
		}
		slices.SortFunc(p.DNS, func(a, b PortRuleDNS) int { return cmp.Compare(a.String(), b.String()) })
		for _, r := range p.DNS {
			parts = append(parts, r.String())
		}
	}
	p.key = parser.String() + "[" + strings.Join(parts, " ") + "]"
	return p
}

// wildcardHTTP and wildcardDNS allow every request (Cilium's L7 wildcard
// rules).
var (
	wildcardHTTP = PortRuleHTTP{}
	wildcardDNS  = PortRuleDNS{MatchPattern: "*"}
)

// mergeL7 ORs the L7 policies of the rules that allow one entry. A rule
// without L7 policy (plain L3/L4) allows every request on that traffic: it
// adds the parser's wildcard rule, so the port stays visible and nothing it
// allows is denied. Parsers that differ keep the first (the compiler refuses
// such policies within one set: CheckL7Conflicts); conflict says so.
func mergeL7(policies []*L7Policy, plain bool) (out *L7Policy, conflict bool) {
	parser := ParserNone
	var http []PortRuleHTTP
	var dns []PortRuleDNS
	for _, p := range policies {
		switch {
		case parser == ParserNone:
			parser = p.Parser
		case p.Parser != parser:
			conflict = true
			continue
		}
		http = append(http, p.HTTP...)
		dns = append(dns, p.DNS...)
	}
	if parser == ParserNone {
		return nil, conflict
	}
	if plain {
		http = append(http, wildcardHTTP)
		dns = append(dns, wildcardDNS)
	}
	return newL7Policy(parser, http, dns), conflict
}

// dnsNameChars are the characters of a matchName; patterns may have "*".
var (
	dnsNameChars    = regexp.MustCompile(`^[-a-zA-Z0-9_.]+$`)
	dnsPatternChars = regexp.MustCompile(`^[-a-zA-Z0-9_.*]+$`)
)

// maxFQDNLength is the longest name or pattern (Cilium's limit).
const maxFQDNLength = 255

// checkName validates a matchName / matchPattern pair: exactly one set,
// DNS characters only.
func checkName(name, pattern, field string) error {
	switch {
	case name != "" && pattern != "":
		return fmt.Errorf("%s: %w: matchName and matchPattern both set (use one per entry)", field, ErrInvalidPolicy)
	case name == "" && pattern == "":
		return fmt.Errorf("%s: %w: neither matchName nor matchPattern set", field, ErrInvalidPolicy)
	case len(name) > maxFQDNLength || len(pattern) > maxFQDNLength:
		return fmt.Errorf("%s: %w: longer than %d characters", field, ErrInvalidPolicy, maxFQDNLength)
	case name != "" && !dnsNameChars.MatchString(name):
		return fmt.Errorf("%s.matchName: %w: %q (only a-z, A-Z, 0-9, '.', '-' and '_')", field, ErrInvalidPolicy, name)
	case pattern != "" && !dnsPatternChars.MatchString(pattern):
		return fmt.Errorf("%s.matchPattern: %w: %q (only a-z, A-Z, 0-9, '.', '-', '_' and '*')", field, ErrInvalidPolicy, pattern)
	case strings.Contains(strings.Trim(name+pattern, "."), ".."):
		return fmt.Errorf("%s: %w: %q has an empty label", field, ErrInvalidPolicy, name+pattern)
	}
	return nil
}

// FQDNPattern is the pattern a matchName or matchPattern stands for, in the
// form the fqdn cache is subscribed with and identities are labelled with:
// lower case, fully qualified (a trailing dot), "*" alone for every name. A
// matchName is a pattern without wildcards.
func FQDNPattern(name, pattern string) string {
	s := strings.ToLower(strings.TrimSpace(name + pattern))
	if strings.Trim(s, "*.") == "" {
		return "*"
	}
	if !strings.HasSuffix(s, ".") {
		s += "."
	}
	return s
}

// checkHTTP validates one HTTP rule: its regular expressions compile, its
// header matches name a header.
func checkHTTP(r PortRuleHTTP, field string) error {
	for _, re := range []struct{ name, v string }{{"path", r.Path}, {"method", r.Method}, {"host", r.Host}} {
		if re.v == "" {
			continue
		}
		if _, err := regexp.Compile(re.v); err != nil {
			return fmt.Errorf("%s.%s: %w: %q is not a regular expression: %w", field, re.name, ErrInvalidPolicy, re.v, err)
		}
	}
	for i, h := range r.Headers {
		if strings.TrimSpace(h) == "" || strings.HasPrefix(strings.TrimSpace(h), ":") {
			return fmt.Errorf("%s.headers[%d]: %w: %q (want \"Name\" or \"Name: value\")", field, i, ErrInvalidPolicy, h)
		}
	}
	for i, m := range r.HeaderMatches {
		f := fmt.Sprintf("%s.headerMatches[%d]", field, i)
		switch {
		case m == nil || m.Name == "":
			return fmt.Errorf("%s.name: %w: missing", f, ErrInvalidPolicy)
		case m.Mismatch != "" && m.Mismatch != "LOG":
			return fmt.Errorf("%s.mismatch: %w: %q (want empty to deny, or LOG; ADD, DELETE and REPLACE are not supported)", f, ErrInvalidPolicy, m.Mismatch)
		}
	}
	return nil
}
