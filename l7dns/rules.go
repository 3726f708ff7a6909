package l7dns

import (
	"fmt"
	"sync/atomic"

	"github.com/clustermesh/clustermesh/fqdn"
)

// PortRuleDNS is one DNS rule of a port, as CiliumNetworkPolicy writes it
// (`toPorts[].rules.dns[]`): exactly one of matchName and matchPattern.
type PortRuleDNS fqdn.Selector

// Rules are a port's compiled DNS rules: a query is allowed when any rule
// selects its name. No rules (or a nil *Rules) allow nothing: visibility
// of every query is `matchPattern: "*"`. Rules are read at every query and
// may be replaced (Update) while connections use them: an open TCP
// connection's next query sees the new ones. Safe for concurrent use.
type Rules struct {
	cur atomic.Pointer[ruleSet]
}

type ruleSet struct {
	rules    []PortRuleDNS
	matchers []*fqdn.Matcher
}

// CompileRules checks and compiles rules; the error names the rule at fault.
func CompileRules(rules []PortRuleDNS) (*Rules, error) {
	r := &Rules{}
	if err := r.Update(rules); err != nil {
		return nil, err
	}
	return r, nil
}

// Update replaces the rules; on an error the previous ones stay.
func (r *Rules) Update(rules []PortRuleDNS) error {
	set := &ruleSet{rules: append([]PortRuleDNS(nil), rules...)}
	for i, rule := range rules {
		m, err := fqdn.Compile(fqdn.Selector(rule))
		if err != nil {
			return fmt.Errorf("dns rule %d: %w", i, err)
		}
		set.matchers = append(set.matchers, m)
	}
	r.cur.Store(set)
	return nil
}

// Allows reports whether a rule selects name.
func (r *Rules) Allows(name string) bool {
	if r == nil {
		return false
	}
	set := r.cur.Load()
	if set == nil {
		return false
	}
	for _, m := range set.matchers {
		if m.Match(name) {
			return true
		}
	}
	return false
}

// Rules are the rules in force.
func (r *Rules) Rules() []PortRuleDNS {
	if r == nil || r.cur.Load() == nil {
		return nil
	}
	return append([]PortRuleDNS(nil), r.cur.Load().rules...)
}
