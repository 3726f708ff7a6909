package l7http

import (
	"fmt"
	"net/textproto"
	"regexp"
	"strings"
	"sync/atomic"
)

// PortRuleHTTP is one HTTP rule of a port, with CiliumNetworkPolicy's JSON
// (`toPorts[].rules.http[]`). Every field given must match for the rule to
// match; a rule with no field matches every request (visibility).
type PortRuleHTTP struct {
	// Path is a regular expression (RE2, as Envoy's safe_regex) matched
	// against the whole request target (path and query), anchored.
	Path string `json:"path,omitempty"`
	// Method is a regular expression matched against the whole method.
	Method string `json:"method,omitempty"`
	// Host is a regular expression matched against the whole Host header
	// (with its port, if the client sent one).
	Host string `json:"host,omitempty"`
	// Headers are "Name: value" (the header has exactly this value) or
	// "Name" (the header is present), as Cilium splits them: at the first
	// space, with the name's trailing ':' removed.
	Headers []string `json:"headers,omitempty"`
	// HeaderMatches are name and value matches; only a mismatch action of
	// "" (the request is denied) is supported, and no secrets.
	HeaderMatches []*HeaderMatch `json:"headerMatches,omitempty"`
}

// HeaderMatch is Cilium's headerMatches entry.
type HeaderMatch struct {
	Mismatch string          `json:"mismatch,omitempty"`
	Name     string          `json:"name"`
	Secret   *map[string]any `json:"secret,omitempty"`
	Value    string          `json:"value,omitempty"`
}

// Policy is a port's HTTP rules, compiled once. A request is allowed when
// any rule matches; a Policy of no rules allows every request (an
// `http: [{}]` rule, visibility only, compiles to one empty rule and allows
// every request too). Update swaps the rules for every connection at once.
type Policy struct {
	rules atomic.Pointer[[]compiledRule]
}

type compiledRule struct {
	path, method, host *regexp.Regexp
	headers            []headerCond
}

// headerCond is one header condition: present (value nil) or equal.
type headerCond struct {
	name  string // canonical
	value *string
}

// NewPolicy compiles rules.
func NewPolicy(rules []PortRuleHTTP) (*Policy, error) {
	p := &Policy{}
	if err := p.Update(rules); err != nil {
		return nil, err
	}
	return p, nil
}

// Update compiles rules and, if they are all valid, makes them the
// policy's; on error the previous rules stay.
func (p *Policy) Update(rules []PortRuleHTTP) error {
	cs := make([]compiledRule, 0, len(rules))
	for i, r := range rules {
		c, err := compileRule(r)
		if err != nil {
			return fmt.Errorf("compiling http rule %d: %w", i, err)
		}
		cs = append(cs, c)
	}
	p.rules.Store(&cs)
	return nil
}

func compileRule(r PortRuleHTTP) (compiledRule, error) {
	var c compiledRule
	var err error
	for _, f := range []struct {
		name string
		re   string
		dst  **regexp.Regexp
	}{{"path", r.Path, &c.path}, {"method", r.Method, &c.method}, {"host", r.Host, &c.host}} {
		if f.re == "" {
			continue
		}
		if *f.dst, err = regexp.Compile(`^(?:` + f.re + `)$`); err != nil {
			return c, fmt.Errorf("%w: %s %q: %v", ErrInvalidRule, f.name, f.re, err)
		}
	}
	for _, h := range r.Headers {
		name, value, hasValue := strings.Cut(h, " ")
		name = strings.TrimRight(name, ":")
		if name == "" {
			return c, fmt.Errorf("%w: header %q has no name", ErrInvalidRule, h)
		}
		cond := headerCond{name: textproto.CanonicalMIMEHeaderKey(name)}
		if hasValue {
			cond.value = &value
		}
		c.headers = append(c.headers, cond)
	}
	for _, m := range r.HeaderMatches {
		if m == nil || m.Name == "" {
			return c, fmt.Errorf("%w: headerMatches entry without a name", ErrInvalidRule)
		}
		if m.Secret != nil || m.Mismatch != "" {
			return c, fmt.Errorf("%w: headerMatches %q: secrets and mismatch actions are not supported by this proxy: match the value literally", ErrInvalidRule, m.Name)
		}
		v := m.Value
		c.headers = append(c.headers, headerCond{name: textproto.CanonicalMIMEHeaderKey(m.Name), value: &v})
	}
	return c, nil
}

// allows reports whether req matches one of the rules (or there are none).
func (p *Policy) allows(req *requestHead) bool {
	if p == nil {
		return true
	}
	rules := *p.rules.Load()
	if len(rules) == 0 {
		return true
	}
	for i := range rules {
		if rules[i].matches(req) {
			return true
		}
	}
	return false
}

func (c *compiledRule) matches(req *requestHead) bool {
	if c.method != nil && !c.method.MatchString(req.method) {
		return false
	}
	if c.path != nil && !c.path.MatchString(req.target) {
		return false
	}
	if c.host != nil && !c.host.MatchString(req.host) {
		return false
	}
	for _, h := range c.headers {
		if !req.hasHeader(h.name, h.value) {
			return false
		}
	}
	return true
}
