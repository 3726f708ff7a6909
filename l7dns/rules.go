package l7dns

import (
	"fmt"

	"github.com/clustermesh/clustermesh/fqdn"
)

// PortRuleDNS is one DNS rule of a port, as CiliumNetworkPolicy writes it
// (`toPorts[].rules.dns[]`): exactly one of matchName and matchPattern.
type PortRuleDNS fqdn.Selector

// Rules are a port's compiled DNS rules: a query is allowed when any rule
// selects its name. No rules (or a nil *Rules) allow nothing: visibility
// of every query is `matchPattern: "*"`.
type Rules struct {
	rules    []PortRuleDNS
	matchers []*fqdn.Matcher
}

// CompileRules checks and compiles rules; the error names the rule at fault.
func CompileRules(rules []PortRuleDNS) (*Rules, error) {
	r := &Rules{rules: append([]PortRuleDNS(nil), rules...)}
	for i, rule := range rules {
		m, err := fqdn.Compile(fqdn.Selector(rule))
		if err != nil {
			return nil, fmt.Errorf("dns rule %d: %w", i, err)
		}
		r.matchers = append(r.matchers, m)
	}
	return r, nil
}

// Allows reports whether a rule selects name.
func (r *Rules) Allows(name string) bool {
	if r == nil {
		return false
	}
	for _, m := range r.matchers {
		if m.Match(name) {
			return true
		}
	}
	return false
}

// Rules are the rules r was compiled from.
func (r *Rules) Rules() []PortRuleDNS {
	if r == nil {
		return nil
	}
	return append([]PortRuleDNS(nil), r.rules...)
}
