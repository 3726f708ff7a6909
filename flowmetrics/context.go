package flowmetrics

import (
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// A label set is built as a key: each value preceded by its length (4
// bytes), so that two label sets have the same key only if they have the
// same values, and a known label set costs no allocation (a map lookup by
// string(key) does not copy it).

// beginValue starts a value whose length is filled in by endValue.
func beginValue(key []byte) ([]byte, int) {
	key = append(key, 0, 0, 0, 0)
	return key, len(key)
}

func endValue(key []byte, start int) []byte {
	n := len(key) - start
	key[start-4], key[start-3], key[start-2], key[start-1] = byte(n), byte(n>>8), byte(n>>16), byte(n>>24)
	return key
}

func appendValue(key []byte, v string) []byte {
	key, start := beginValue(key)
	return endValue(append(key, v...), start)
}

func appendUint(key []byte, v uint32) []byte {
	key, start := beginValue(key)
	return endValue(strconv.AppendUint(key, uint64(v), 10), start)
}

func appendInt(key []byte, v int64) []byte {
	key, start := beginValue(key)
	return endValue(strconv.AppendInt(key, v, 10), start)
}

// splitKey returns the values of a key.
func splitKey(key []byte) []string {
	var vs []string
	for len(key) >= 4 {
		n := int(key[0]) | int(key[1])<<8 | int(key[2])<<16 | int(key[3])<<24
		vs = append(vs, string(key[4:4+n]))
		key = key[4+n:]
	}
	return vs
}

// appendContext appends the context labels' values: labelsContext's, then
// source and destination.
func (o *ContextOptions) appendContext(key []byte, f *flowpb.Flow) []byte {
	return o.appendContextOf(key, f, false)
}

// appendContextInverted is appendContext with source and destination
// swapped, as Hubble's httpV2 labels a response (a reply) by its request's
// ends: labelsContext's source labels name the flow's destination, and
// the source label holds the destination context's value.
func (o *ContextOptions) appendContextInverted(key []byte, f *flowpb.Flow) []byte {
	return o.appendContextOf(key, f, true)
}

func (o *ContextOptions) appendContextOf(key []byte, f *flowpb.Flow, invert bool) []byte {
	for _, l := range o.Labels {
		var start int
		key, start = beginValue(key)
		key = endValue(appendLabel(key, l, f, invert), start)
	}
	dir := f.GetTrafficDirection()
	if !invert {
		if o.hasSource() {
			key = appendFirst(key, pick(o.Source, o.SourceEgress, o.SourceIngress, dir), f, true)
		}
		if o.hasDestination() {
			key = appendFirst(key, pick(o.Destination, o.DestinationEgress, o.DestinationIngress, dir), f, false)
		}
		return key
	}
	// Inverted (Hubble's getLabelValues with invert): each side's value is
	// computed as usual, then the values trade places; a side without
	// contexts has the empty value.
	var scratch [128]byte
	src := scratch[:0]
	if o.hasSource() {
		src = appendFirst(src, pick(o.Source, o.SourceEgress, o.SourceIngress, dir), f, true)
	} else {
		src = appendValue(src, "")
	}
	if o.hasSource() {
		if o.hasDestination() {
			key = appendFirst(key, pick(o.Destination, o.DestinationEgress, o.DestinationIngress, dir), f, false)
		} else {
			key = appendValue(key, "")
		}
	}
	if o.hasDestination() {
		key = append(key, src...)
	}
	return key
}

// pick returns the contexts for a flow's direction.
func pick(both, egress, ingress []Context, dir flowpb.TrafficDirection) []Context {
	switch {
	case ingress != nil && dir == flowpb.TrafficDirection_INGRESS:
		return ingress
	case egress != nil && dir == flowpb.TrafficDirection_EGRESS:
		return egress
	}
	return both
}

// appendFirst appends the first non-empty value of cs.
func appendFirst(key []byte, cs []Context, f *flowpb.Flow, source bool) []byte {
	key, start := beginValue(key)
	for _, c := range cs {
		key = appendContextValue(key, c, f, source)
		if len(key) > start {
			break
		}
	}
	return endValue(key, start)
}

func appendContextValue(key []byte, c Context, f *flowpb.Flow, source bool) []byte {
	ep, ip, names := f.GetDestination(), f.GetIP().GetDestination(), f.GetDestinationNames()
	if source {
		ep, ip, names = f.GetSource(), f.GetIP().GetSource(), f.GetSourceNames()
	}
	switch c {
	case ContextIdentity:
		return appendJoined(key, ep.GetLabels())
	case ContextNamespace:
		return append(key, ep.GetNamespace()...)
	case ContextPod:
		return appendQualified(key, ep.GetNamespace(), ep.GetPodName(), true)
	case ContextPodName:
		return append(key, ep.GetPodName()...)
	case ContextDNS:
		return appendJoined(key, names)
	case ContextIP:
		return append(key, ip...)
	case ContextReservedIdentity:
		return append(key, reservedIdentity(ep.GetLabels())...)
	case ContextWorkload:
		return appendQualified(key, ep.GetNamespace(), workload(ep).GetName(), false)
	case ContextWorkloadName:
		return append(key, workload(ep).GetName()...)
	case ContextApp:
		return append(key, app(ep.GetLabels())...)
	case ContextCluster:
		return append(key, ep.GetClusterName()...)
	}
	return key
}

// appendQualified appends namespace/name when both are set; name alone
// otherwise, and when emptyName, namespace/ even with no name (Hubble's pod
// context does so).
func appendQualified(key []byte, namespace, name string, emptyName bool) []byte {
	if namespace != "" && (name != "" || emptyName) {
		key = append(append(key, namespace...), '/')
	}
	return append(key, name...)
}

func appendJoined(key []byte, vs []string) []byte {
	for i, v := range vs {
		if i > 0 {
			key = append(key, ',')
		}
		key = append(key, v...)
	}
	return key
}

func workload(ep *flowpb.Endpoint) *flowpb.Workload {
	if ws := ep.GetWorkloads(); len(ws) > 0 {
		return ws[0]
	}
	return nil
}

// reservedIdentity is reserved:kube-apiserver when present, else the first
// reserved: label.
func reservedIdentity(labels []string) string {
	first := ""
	for _, l := range labels {
		if l == "reserved:kube-apiserver" {
			return l
		}
		if first == "" && strings.HasPrefix(l, "reserved:") {
			first = l
		}
	}
	return first
}

// appLabels are the labels Hubble reads an app's name from, by preference.
var appLabels = []string{"k8s:app.kubernetes.io/name=", "k8s:k8s-app=", "k8s:app="}

// app is the value of the first label (in the endpoint's order) that is one
// of appLabels with a value.
func app(labels []string) string {
	for _, l := range labels {
		for _, p := range appLabels {
			if v, ok := strings.CutPrefix(l, p); ok && v != "" {
				return v
			}
		}
	}
	return ""
}

// appendLabel appends one labelsContext label's value; invert swaps the
// flow's ends.
func appendLabel(key []byte, label string, f *flowpb.Flow, invert bool) []byte {
	side, field, ok := strings.Cut(label, "_")
	if !ok {
		return key
	}
	if label == "traffic_direction" {
		return append(key, direction(f.GetTrafficDirection())...)
	}
	ep, ip := f.GetDestination(), f.GetIP().GetDestination()
	if (side == "source") != invert {
		ep, ip = f.GetSource(), f.GetIP().GetSource()
	}
	switch field {
	case "ip":
		return append(key, ip...)
	case "pod":
		return append(key, ep.GetPodName()...)
	case "namespace":
		return append(key, ep.GetNamespace()...)
	case "workload":
		return append(key, workload(ep).GetName()...)
	case "workload_kind":
		return append(key, workload(ep).GetKind()...)
	case "app":
		return append(key, app(ep.GetLabels())...)
	case "cluster":
		return append(key, ep.GetClusterName()...)
	}
	return key
}

func direction(d flowpb.TrafficDirection) string {
	switch d {
	case flowpb.TrafficDirection_INGRESS:
		return "ingress"
	case flowpb.TrafficDirection_EGRESS:
		return "egress"
	}
	return "unknown"
}
