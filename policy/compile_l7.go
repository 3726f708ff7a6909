package policy

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/clustermesh/clustermesh/wire"
)

// FQDNLabelSource is the label source of the identities the agent gives
// the addresses of FQDN-selected names: one label per pattern that selects
// the address (key: the pattern), as Cilium's fqdn: labels.
const FQDNLabelSource = "fqdn"

// dnsPort is the only port DNS rules apply to (Cilium requires it too: the
// DNS proxy's redirect is for the standard port).
const dnsPort = 53

// compilePortRule compiles one toPorts entry: its port ranges and their
// L7 policy (nil: plain L3/L4).
func compilePortRule(pr PortRule, dir Direction, field string) ([]PortRange, *L7Policy, error) {
	var ranges []PortRange
	for k, pp := range pr.Ports {
		r, err := compilePort(pp.Port, pp.EndPort, pp.Protocol, fmt.Sprintf("%s.ports[%d]", field, k))
		if err != nil {
			return nil, nil, err
		}
		ranges = append(ranges, r)
	}
	if pr.Rules == nil || (len(pr.Rules.HTTP) == 0 && len(pr.Rules.DNS) == 0) {
		return ranges, nil, nil
	}
	rf := field + ".rules"
	switch {
	case len(pr.Rules.HTTP) > 0 && len(pr.Rules.DNS) > 0:
		return nil, nil, fmt.Errorf("%s: %w: http and dns rules on one port (one L7 protocol per port)", rf, ErrInvalidPolicy)
	case len(ranges) == 0:
		return nil, nil, fmt.Errorf("%s: %w: L7 rules need ports (list them in %s.ports)", rf, ErrInvalidPolicy, field)
	case len(pr.Rules.HTTP) > 0:
		return compileHTTP(pr, ranges, field)
	}
	return compileDNS(pr, ranges, dir, field)
}

func compileHTTP(pr PortRule, ranges []PortRange, field string) ([]PortRange, *L7Policy, error) {
	for k, r := range ranges {
		if r.From == 0 {
			return nil, nil, fmt.Errorf("%s.ports[%d].port: %w: L7 rules need a port, not 0 (every port)", field, k, ErrInvalidPolicy)
		}
		if r.Protocol != TCP {
			return nil, nil, fmt.Errorf("%s.ports[%d].protocol: %w: http rules apply to TCP only (set protocol: TCP)", field, k, ErrInvalidPolicy)
		}
	}
	for i, h := range pr.Rules.HTTP {
		if err := checkHTTP(h, fmt.Sprintf("%s.rules.http[%d]", field, i)); err != nil {
			return nil, nil, err
		}
	}
	return ranges, newL7Policy(ParserHTTP, pr.Rules.HTTP, nil), nil
}

// compileDNS checks DNS rules: egress, port 53 alone, UDP, TCP or ANY (which
// stands for UDP and TCP here: the DNS proxy serves those two).
func compileDNS(pr PortRule, ranges []PortRange, dir Direction, field string) ([]PortRange, *L7Policy, error) {
	if dir != Egress {
		return nil, nil, fmt.Errorf("%s.rules.dns: %w: DNS rules apply to egress only (a pod's queries)", field, ErrInvalidPolicy)
	}
	var out []PortRange
	for k, r := range ranges {
		if r.From != dnsPort || r.To != dnsPort {
			return nil, nil, fmt.Errorf("%s.ports[%d]: %w: DNS rules apply to port 53 alone", field, k, ErrInvalidPolicy)
		}
		switch r.Protocol {
		case UDP, TCP:
			out = append(out, r)
		case AnyProtocol:
			out = append(out, PortRange{Protocol: UDP, From: dnsPort, To: dnsPort}, PortRange{Protocol: TCP, From: dnsPort, To: dnsPort})
		default:
			return nil, nil, fmt.Errorf("%s.ports[%d].protocol: %w: DNS rules apply to UDP, TCP or ANY", field, k, ErrInvalidPolicy)
		}
	}
	for i, d := range pr.Rules.DNS {
		if err := checkName(d.MatchName, d.MatchPattern, fmt.Sprintf("%s.rules.dns[%d]", field, i)); err != nil {
			return nil, nil, err
		}
	}
	return out, newL7Policy(ParserDNS, nil, pr.Rules.DNS), nil
}

// fqdnSelector selects the identities of the addresses pattern selects.
func fqdnSelector(pattern string) selector {
	return selector{reqs: []requirement{{source: FQDNLabelSource, key: pattern, op: OpExists}}}
}

// FQDNLabels are the labels of the identity of address prefix (a /32 or
// /128) that the FQDN patterns select: one fqdn: label per pattern, and the
// address as Cilium's cidr: label.
func FQDNLabels(prefix netip.Prefix, patterns []string) wire.Labels {
	ls := wire.Labels{{Source: "cidr", Key: prefix.String()}}
	for _, p := range patterns {
		ls = ls.With(wire.Label{Source: FQDNLabelSource, Key: p})
	}
	return ls
}

// FQDNPatterns lists, sorted and without duplicates, the patterns of every
// toFQDNs selector of c: the names whose addresses the agent must learn
// (FQDNPattern gives their form).
func (c *Compiled) FQDNPatterns() []string {
	var out []string
	for _, r := range c.rules {
		out = append(out, r.fqdns...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// HasL7 reports whether some rule of c has L7 rules.
func (c *Compiled) HasL7() bool {
	return slices.ContainsFunc(c.rules, func(r compiledRule) bool { return r.l7 != nil })
}

// CheckL7Conflicts refuses a set whose rules put HTTP and DNS rules on
// overlapping ports of one direction: an entry can have one parser only.
// (Rules of different endpoints could coexist; the check is on ports alone,
// so that a set never depends on which identities exist.) The error names
// both rules.
func CheckL7Conflicts(c *Compiled) error {
	type at struct {
		r      *compiledRule
		ports  PortRange
		parser L7Parser
	}
	var seen []at
	for i := range c.rules {
		r := &c.rules[i]
		for j, p := range r.l7 {
			if p == nil {
				continue
			}
			for _, s := range seen {
				if s.r.dir == r.dir && s.parser != p.Parser && overlaps(s.ports, r.ports[j]) {
					return fmt.Errorf("%w: %s rules of %s and %s rules of %s on overlapping %s ports (one L7 protocol per port)",
						ErrInvalidPolicy, s.parser, s.r.origin, p.Parser, r.origin, r.dir)
				}
			}
			seen = append(seen, at{r, r.ports[j], p.Parser})
		}
	}
	return nil
}

// covers reports whether range a includes every flow of b.
func covers(a, b PortRange) bool {
	if a.Protocol != AnyProtocol && a.Protocol != b.Protocol {
		return false
	}
	return a.From == 0 || (b.From != 0 && a.From <= b.From && b.To <= a.To)
}

// overlaps reports whether ranges a and b share a flow.
func overlaps(a, b PortRange) bool {
	if a.Protocol != AnyProtocol && b.Protocol != AnyProtocol && a.Protocol != b.Protocol {
		return false
	}
	return a.From == 0 || b.From == 0 || (a.From <= b.To && b.From <= a.To)
}
