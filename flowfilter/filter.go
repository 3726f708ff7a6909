// Package flowfilter owns Hubble's flow filters, written for this project:
// a list of flowpb.FlowFilter (what `hubble observe` sends as its allowlist
// and denylist) compiled once into a Filter that matches flows fast.
//
// The semantics are Hubble's (Cilium's pkg/hubble/filters): a flow passes
// when it matches at least one whitelist filter (or the whitelist is empty)
// and no blacklist filter; within one FlowFilter every set field must match
// (AND); within one field any of its values matches (OR). A field this
// package does not implement is refused by Compile, never ignored, and so is
// a value it cannot parse.
package flowfilter

import (
	"errors"
	"fmt"
	"sort"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The errors Compile returns wrap one of these.
var (
	// ErrUnsupportedField is a FlowFilter field that this package does not
	// implement (the error names it): the filter is refused rather than
	// matching more than was asked.
	ErrUnsupportedField = errors.New("unsupported filter field")
	// ErrInvalidValue is a value of a supported field that cannot be
	// parsed: a bad address or CIDR, label selector, pattern, regular
	// expression, port or status code (the error names field and value).
	ErrInvalidValue = errors.New("invalid filter value")
)

// matchFunc reports whether one field of a FlowFilter matches a flow.
type matchFunc func(*flowpb.Flow) bool

// conjunction is one compiled FlowFilter: every field must match.
type conjunction []matchFunc

func (c conjunction) match(f *flowpb.Flow) bool {
	for _, m := range c {
		if !m(f) {
			return false
		}
	}
	return true
}

// Filter is a compiled whitelist and blacklist. It is immutable and safe for
// concurrent use.
type Filter struct {
	whitelist []conjunction
	blacklist []conjunction
}

// Compile compiles Hubble's whitelist and blacklist (GetFlowsRequest's
// whitelist and blacklist, an exporter's includeFilters and
// excludeFilters). Nil filters in the lists are refused.
func Compile(whitelist, blacklist []*flowpb.FlowFilter) (*Filter, error) {
	wl, err := compileList(whitelist)
	if err != nil {
		return nil, fmt.Errorf("compiling whitelist: %w", err)
	}
	bl, err := compileList(blacklist)
	if err != nil {
		return nil, fmt.Errorf("compiling blacklist: %w", err)
	}
	return &Filter{whitelist: wl, blacklist: bl}, nil
}

// Match reports whether f matches at least one whitelist filter (or the
// whitelist is empty) and no blacklist filter. A nil Filter matches every
// flow; a nil flow matches nothing.
func (x *Filter) Match(f *flowpb.Flow) bool {
	if f == nil {
		return false
	}
	if x == nil {
		return true
	}
	if len(x.whitelist) > 0 && !anyMatch(x.whitelist, f) {
		return false
	}
	return !anyMatch(x.blacklist, f)
}

func anyMatch(cs []conjunction, f *flowpb.Flow) bool {
	for _, c := range cs {
		if c.match(f) {
			return true
		}
	}
	return false
}

func compileList(ffs []*flowpb.FlowFilter) ([]conjunction, error) {
	out := make([]conjunction, 0, len(ffs))
	for i, ff := range ffs {
		if ff == nil {
			return nil, fmt.Errorf("filter %d: %w: nil FlowFilter", i, ErrInvalidValue)
		}
		c, err := compileOne(ff)
		if err != nil {
			return nil, fmt.Errorf("filter %d: %w", i, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// ranked is a compiled field with the rank of its cost: cheap comparisons
// run before addresses, and those before selectors and regular expressions.
type ranked struct {
	rank  int
	match matchFunc
}

func compileOne(ff *flowpb.FlowFilter) (conjunction, error) {
	if err := refuseUnknown(ff); err != nil {
		return nil, err
	}
	var (
		fields []ranked
		err    error
	)
	ff.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		name := string(fd.Name())
		b, ok := builders[name]
		if !ok {
			err = fmt.Errorf("%w %q", ErrUnsupportedField, name)
			return false
		}
		var m matchFunc
		if m, err = b.build(ff); err != nil {
			return false
		}
		if m != nil {
			fields = append(fields, ranked{rank: b.rank, match: m})
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	sort.SliceStable(fields, func(i, j int) bool { return fields[i].rank < fields[j].rank })
	c := make(conjunction, len(fields))
	for i, f := range fields {
		c[i] = f.match
	}
	return c, nil
}

// refuseUnknown refuses fields that the generated FlowFilter does not know
// (a newer client's): they cannot be honoured, so they must not be dropped.
func refuseUnknown(ff *flowpb.FlowFilter) error {
	raw := ff.ProtoReflect().GetUnknown()
	if len(raw) == 0 {
		return nil
	}
	num, _, n := protowire.ConsumeTag(raw)
	if n < 0 {
		return fmt.Errorf("%w: malformed unknown field", ErrUnsupportedField)
	}
	return fmt.Errorf("%w number %d (unknown to Cilium v1.20's FlowFilter)", ErrUnsupportedField, num)
}

// invalid is the error of a value that cannot be parsed.
func invalid(field, value string, err error) error {
	if err == nil {
		return fmt.Errorf("%w for %q: %q", ErrInvalidValue, field, value)
	}
	return fmt.Errorf("%w for %q: %q: %w", ErrInvalidValue, field, value, err)
}
