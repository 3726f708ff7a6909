package flowfilter

import (
	"net/netip"
	"strings"
	"unicode"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	k8slabels "k8s.io/apimachinery/pkg/labels"
)

// Label filters are Kubernetes label selectors over Cilium's labels
// ("source:key=value", as a flow's endpoints and node carry them). A
// selector's key may name a source ("k8s:app", "reserved:world"); a key
// without one matches the key from any source. Kubernetes selectors do not
// allow colons, so, as Hubble does, each key's first colon becomes a dot
// ("k8s:app" is selected as "k8s.app", "app" as "any.app") and the labels
// are looked up the same way.

// translateSelector rewrites "k8s:app in (a, b), !env" as
// "k8s.app in (a, b), !any.env".
func translateSelector(sel string) string {
	var out strings.Builder
	i := 0
	for i < len(sel) {
		// Up to the key: spaces and negations.
		for i < len(sel) && (sel[i] == '!' || unicode.IsSpace(rune(sel[i]))) {
			out.WriteByte(sel[i])
			i++
		}
		start := i
		for i < len(sel) && !strings.ContainsRune(" \t\n\r\f\v=!,", rune(sel[i])) {
			i++
		}
		out.WriteString(sourceDotted(sel[start:i]))
		// Up to the next requirement: a comma outside parentheses.
		depth := 0
		for i < len(sel) {
			c := sel[i]
			out.WriteByte(c)
			i++
			if c == '(' {
				depth++
			} else if c == ')' {
				depth--
			} else if c == ',' && depth == 0 {
				break
			}
		}
	}
	return out.String()
}

func sourceDotted(key string) string {
	if !strings.Contains(key, ":") {
		return "any." + key
	}
	return strings.Replace(key, ":", ".", 1)
}

func labelField(field string, get func(*flowpb.FlowFilter) []string, labels func(*flowpb.Flow) *[]string) func(*flowpb.FlowFilter) (matchFunc, error) {
	return func(ff *flowpb.FlowFilter) (matchFunc, error) {
		var sels []k8slabels.Selector
		for _, v := range get(ff) {
			s, err := k8slabels.Parse(translateSelector(v))
			if err != nil {
				return nil, invalid(field, v, err)
			}
			sels = append(sels, s)
		}
		return func(f *flowpb.Flow) bool {
			// A pointer to the flow's own list: no copy, no allocation.
			ls := (*ciliumLabels)(labels(f))
			for _, s := range sels {
				if s.Matches(ls) {
					return true
				}
			}
			return false
		}, nil
	}
}

// ciliumLabels is a flow's label list seen as Kubernetes labels whose keys
// are "source.key" ("any.key": from any source). Lookups scan the list
// without allocating.
type ciliumLabels []string

var _ k8slabels.Labels = ciliumLabels(nil)

func (ls ciliumLabels) Has(key string) bool {
	_, ok := ls.Lookup(key)
	return ok
}

func (ls ciliumLabels) Get(key string) string {
	v, _ := ls.Lookup(key)
	return v
}

// Lookup finds the first label with the selected source and key.
func (ls ciliumLabels) Lookup(key string) (string, bool) {
	wantSource, wantKey := splitSelectKey(key)
	for _, l := range ls {
		source, k, v := splitLabel(l)
		if wantSource != "any" && wantSource != source {
			continue
		}
		if k == wantKey || source == "cidr" && wantSource == "cidr" && cidrCovers(wantKey, k) {
			return v, true
		}
	}
	return "", false
}

// cidrCovers is Cilium's matching of CIDR labels: "cidr:10.0.0.0/8"
// selects "cidr:10.1.0.0/16" (IPv6 prefixes write their colons as dashes).
func cidrCovers(outer, inner string) bool {
	o, err := netip.ParsePrefix(strings.ReplaceAll(outer, "-", ":"))
	if err != nil {
		return false
	}
	i, err := netip.ParsePrefix(strings.ReplaceAll(inner, "-", ":"))
	return err == nil && o.Bits() <= i.Bits() && o.Contains(i.Addr())
}

// splitSelectKey splits a selected key at its first dot; "$key" is
// reserved and a key without a source is of any source.
func splitSelectKey(key string) (source, k string) {
	if strings.HasPrefix(key, "$") {
		return "reserved", key[1:]
	}
	source, k, ok := strings.Cut(key, ".")
	if !ok {
		return "any", key
	}
	return source, k
}

// splitLabel splits Cilium's "source:key=value" ("$key" is reserved, no
// source is "unspec").
func splitLabel(l string) (source, key, value string) {
	source, rest := "unspec", l
	if strings.HasPrefix(l, "$") {
		source, rest = "reserved", l[1:]
	} else if s, r, ok := strings.Cut(l, ":"); ok {
		source, rest = s, r
	}
	key, value, _ = strings.Cut(rest, "=")
	return source, key, value
}
