// Package flowmask owns Hubble's field masks over flows (GetFlowsRequest's
// field_mask, an exporter's fieldMask): which fields of a flowpb.Flow to
// keep, compiled once and applied to each flow.
package flowmask

import (
	"fmt"
	"slices"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
)

// Mask is a tree of Flow fields to keep: a leaf keeps the whole field, an
// inner node keeps only its listed sub-fields. An empty mask keeps all.
type Mask map[protoreflect.Name]Mask

// Compile checks paths over Flow ("source.namespace", "verdict"; a leading
// "flow." is allowed) and returns the tree and the normalized paths
// (sorted, covered paths dropped).
func Compile(paths []string) (Mask, []string, error) {
	if len(paths) == 0 {
		return nil, nil, nil
	}
	trimmed := make([]string, len(paths))
	for i, p := range paths {
		trimmed[i] = strings.TrimPrefix(p, "flow.")
	}
	fm, err := fieldmaskpb.New(&flowpb.Flow{}, trimmed...)
	if err != nil {
		return nil, nil, fmt.Errorf("%q: %w", paths, err)
	}
	fm.Normalize()
	tree := Mask{}
	for _, p := range fm.GetPaths() {
		tree.add(strings.Split(p, "."))
	}
	return tree, slices.Clone(fm.GetPaths()), nil
}

func (m Mask) add(parts []string) {
	name := protoreflect.Name(parts[0])
	if len(parts) == 1 {
		m[name] = nil
		return
	}
	if m[name] == nil {
		m[name] = Mask{}
	}
	m[name].add(parts[1:])
}

// Apply returns f itself without a mask, else a new Flow with only the
// masked fields that f has set (no empty parents).
func (m Mask) Apply(f *flowpb.Flow) *flowpb.Flow {
	if len(m) == 0 {
		return f
	}
	out := &flowpb.Flow{}
	m.copy(out.ProtoReflect(), f.ProtoReflect())
	return out
}

// copy sets in dst the masked fields set in src; it reports whether it set
// any, so that an inner message with nothing kept is not created.
func (m Mask) copy(dst, src protoreflect.Message) bool {
	fields := src.Descriptor().Fields()
	kept := false
	for name, sub := range m {
		fd := fields.ByName(name)
		if fd == nil || !src.Has(fd) {
			continue
		}
		if len(sub) == 0 || fd.Message() == nil || fd.IsList() || fd.IsMap() {
			dst.Set(fd, src.Get(fd))
			kept = true
			continue
		}
		child := dst.NewField(fd).Message()
		if sub.copy(child, src.Get(fd).Message()) {
			dst.Set(fd, protoreflect.ValueOfMessage(child))
			kept = true
		}
	}
	return kept
}
