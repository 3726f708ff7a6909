package policy

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/clustermesh/clustermesh/wire"
)

// Label keys with a meaning of their own.
const (
	NamespaceLabel = wire.NamespaceLabel
	// namespaceLabelPrefix carries a namespace's own labels into its pods'
	// identities, as Cilium does.
	namespaceLabelPrefix = "io.cilium.k8s.namespace.labels."
	// k8sNamespaceNameLabel is the label every Kubernetes namespace carries
	// with its own name.
	k8sNamespaceNameLabel = "kubernetes.io/metadata.name"
)

// ErrInvalidPolicy is wrapped by every error about a policy document.
var ErrInvalidPolicy = errors.New("invalid policy")

// Operators of a match expression.
const (
	OpIn           = "In"
	OpNotIn        = "NotIn"
	OpExists       = "Exists"
	OpDoesNotExist = "DoesNotExist"
)

// requirement is one compiled condition on an identity's labels. key may be
// "source:key" to match one source only; otherwise any source matches.
type requirement struct {
	source, key string
	op          string
	values      []string // sorted
}

// selector is a compiled label selector: every requirement must hold.
type selector struct {
	reqs []requirement
}

// compileSelector checks and compiles s; field names the selector in errors.
func compileSelector(s Selector, field string) (selector, error) {
	var out selector
	keys := make([]string, 0, len(s.MatchLabels))
	for k := range s.MatchLabels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "" {
			return out, fmt.Errorf("%s.matchLabels: %w: empty key", field, ErrInvalidPolicy)
		}
		out.reqs = append(out.reqs, newRequirement(k, OpIn, []string{s.MatchLabels[k]}))
	}
	for i, e := range s.MatchExpressions {
		f := fmt.Sprintf("%s.matchExpressions[%d]", field, i)
		switch e.Operator {
		case OpIn, OpNotIn:
			if len(e.Values) == 0 {
				return out, fmt.Errorf("%s: %w: operator %s needs values", f, ErrInvalidPolicy, e.Operator)
			}
		case OpExists, OpDoesNotExist:
			if len(e.Values) != 0 {
				return out, fmt.Errorf("%s: %w: operator %s takes no values", f, ErrInvalidPolicy, e.Operator)
			}
		default:
			return out, fmt.Errorf("%s.operator: %w: %q (want In, NotIn, Exists or DoesNotExist)", f, ErrInvalidPolicy, e.Operator)
		}
		if e.Key == "" {
			return out, fmt.Errorf("%s.key: %w: empty", f, ErrInvalidPolicy)
		}
		out.reqs = append(out.reqs, newRequirement(e.Key, e.Operator, e.Values))
	}
	return out, nil
}

func newRequirement(key, op string, values []string) requirement {
	r := requirement{key: key, op: op, values: slices.Clone(values)}
	if src, k, ok := strings.Cut(key, ":"); ok && !strings.Contains(src, ".") && !strings.Contains(src, "/") {
		r.source, r.key = src, k
	}
	sort.Strings(r.values)
	return r
}

// mentions reports whether the selector has a requirement on key.
func (s selector) mentions(key string) bool {
	for _, r := range s.reqs {
		if r.key == key {
			return true
		}
	}
	return false
}

// with returns s plus a requirement.
func (s selector) with(r requirement) selector {
	return selector{reqs: append(slices.Clone(s.reqs), r)}
}

// matches reports whether the labels satisfy every requirement.
func (s selector) matches(ls wire.Labels) bool {
	for _, r := range s.reqs {
		if !r.matches(ls) {
			return false
		}
	}
	return true
}

func (r requirement) matches(ls wire.Labels) bool {
	v, ok := lookup(ls, r.source, r.key)
	switch r.op {
	case OpIn:
		return ok && contains(r.values, v)
	case OpNotIn:
		return !ok || !contains(r.values, v)
	case OpExists:
		return ok
	case OpDoesNotExist:
		return !ok
	}
	return false
}

func lookup(ls wire.Labels, source, key string) (string, bool) {
	for _, l := range ls {
		if l.Key == key && (source == "" || source == "any" || l.Source == source) {
			return l.Value, true
		}
	}
	return "", false
}

func contains(sorted []string, v string) bool {
	_, ok := slices.BinarySearch(sorted, v)
	return ok
}
