package flowfilter

import (
	"errors"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/encoding/protojson"
)

// FuzzCompileMatch compiles any FlowFilter (protojson) and matches the
// sample flows: Compile either succeeds or returns one of the sentinel
// errors, and a filter as blacklist selects exactly the flows it does not
// select as whitelist.
func FuzzCompileMatch(f *testing.F) {
	for _, c := range hubbleCases {
		for _, s := range append(append([]string{}, c.allow...), c.deny...) {
			f.Add(s)
		}
	}
	f.Add(`{"source_label":["k8s:app in (a,b), !env"],"destination_ip":["10.0.0.0/8"]}`)
	f.Add(`{"node_name":["east/*.example"],"http_status_code":["4+"]}`)
	f.Add(`{"experimental":{"cel_expression":["true"]}}`)
	flows := sampleFlows()
	f.Fuzz(func(t *testing.T, js string) {
		ff := &flowpb.FlowFilter{}
		if protojson.Unmarshal([]byte(js), ff) != nil {
			return
		}
		in, err := Compile([]*flowpb.FlowFilter{ff}, nil)
		if err != nil {
			if !errors.Is(err, ErrInvalidValue) && !errors.Is(err, ErrUnsupportedField) {
				t.Fatalf("Compile(%s): error without a sentinel: %v", js, err)
			}
			return
		}
		out, err := Compile(nil, []*flowpb.FlowFilter{ff})
		if err != nil {
			t.Fatalf("Compile(%s) as blacklist: %v, as whitelist: ok", js, err)
		}
		for name, fl := range flows {
			if in.Match(fl) == out.Match(fl) {
				t.Fatalf("%s on %s: whitelist and blacklist agree (%v)", js, name, in.Match(fl))
			}
		}
	})
}

// FuzzLabelSelector matches any selector against any labels without
// panicking.
func FuzzLabelSelector(f *testing.F) {
	f.Add("k8s:app in (a, b), !env", "k8s:app=a")
	f.Add("reserved:world", "reserved:world")
	f.Add("$host", "$host")
	f.Add("any:x=y", "x=y")
	f.Fuzz(func(t *testing.T, sel, label string) {
		ff := &flowpb.FlowFilter{SourceLabel: []string{sel}}
		x, err := Compile([]*flowpb.FlowFilter{ff}, nil)
		if err != nil {
			if !errors.Is(err, ErrInvalidValue) {
				t.Fatalf("selector %q: %v", sel, err)
			}
			return
		}
		x.Match(&flowpb.Flow{Source: &flowpb.Endpoint{Labels: []string{label, label + "=" + label}}})
	})
}
