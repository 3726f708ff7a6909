package flowmetrics

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestParse(t *testing.T) {
	cfg, err := Parse([]string{
		"flow",
		"drop:sourceContext=namespace|pod;destinationContext=identity;labelsContext=destination_namespace,source_namespace",
		"tcp:sourceEgressContext=workload-name;SOURCECONTEXT=Pod-Name|cluster;destinationIngressContext=app|reserved-identity",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Metrics: []MetricConfig{
		{Name: "flow"},
		{Name: "drop", Context: ContextOptions{
			Source:      []Context{ContextNamespace, ContextPod},
			Destination: []Context{ContextIdentity},
			// labelsContext's labels are kept in Hubble's order, not the spec's.
			Labels: []string{"source_namespace", "destination_namespace"},
		}},
		{Name: "tcp", Context: ContextOptions{
			Source:             []Context{ContextPodName, ContextCluster},
			SourceEgress:       []Context{ContextWorkloadName},
			DestinationIngress: []Context{ContextApp, ContextReservedIdentity},
		}},
	}}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("Parse = %+v\nwant %+v", cfg, want)
	}
	const canonical = "flow drop:sourceContext=namespace|pod;destinationContext=identity;labelsContext=source_namespace,destination_namespace " +
		"tcp:sourceContext=pod-name|cluster;sourceEgressContext=workload-name;destinationIngressContext=app|reserved-identity"
	if got := cfg.String(); got != canonical {
		t.Errorf("String = %q\nwant %q", got, canonical)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		spec string
		want error
		says string // the message names what is wrong and what is allowed
	}{
		{"kafka", ErrUnknownMetric, `unknown metric "kafka" (one of flow, drop, tcp, port-distribution, icmp, http, httpV2, dns)`},
		{"http:exemplars=yes", ErrInvalidValue, `option exemplars: invalid option value "yes": exemplars takes true or false`},
		{"dns:exemplars=true", ErrUnknownOption, "option exemplars: unknown option"},
		{"http:query", ErrUnknownOption, "option query: unknown option"},
		{"", ErrUnknownMetric, `unknown metric ""`},
		{"drop:sourceContext=namespac", ErrUnknownContext, `option sourceContext: unknown context "namespac" (one of identity, namespace,`},
		{"drop:sourceContext", ErrEmptyValue, "option sourceContext: option without a value"},
		{"drop:sourceContext=|", ErrEmptyValue, "option without a value"},
		{"drop:labelsContext=source_pod,pod", ErrUnknownLabel, `unknown labelsContext label "pod" (one of source_ip,`},
		{"drop:labelsContext=", ErrEmptyValue, "option labelsContext: option without a value"},
		{"drop:sourceCtx=pod", ErrUnknownOption, "option sourceCtx: unknown option"},
		{"drop:sourceContext=pod;sourcecontext=namespace", ErrDuplicateOption, "option given twice: sourcecontext"},
	} {
		_, err := Parse([]string{tc.spec})
		if !errors.Is(err, tc.want) {
			t.Errorf("Parse(%q) = %v, want %v", tc.spec, err, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), `parsing metric spec "`+tc.spec+`"`) {
			t.Errorf("Parse(%q) says %q, want it to name the spec and say %q", tc.spec, err, tc.says)
		}
	}
	if _, err := Parse([]string{"http", "httpV2:exemplars=true"}); !errors.Is(err, ErrDuplicateMetric) || !strings.Contains(err.Error(), "enable one of http and httpV2") {
		t.Errorf("http and httpV2 together: %v, want %v saying to enable one", err, ErrDuplicateMetric)
	}
	if _, err := Parse([]string{"drop", "flow", "drop:sourceContext=pod"}); !errors.Is(err, ErrDuplicateMetric) {
		t.Errorf("a metric enabled twice: %v, want %v", err, ErrDuplicateMetric)
	}
}

// FuzzParse: Parse never panics; what it accepts prints as specs that parse
// back to the same config, and registers.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"flow", "drop:sourceContext=namespace|pod;destinationContext=identity;labelsContext=source_namespace,destination_namespace",
		"tcp:sourceEgressContext=pod;destinationIngressContext=dns|ip", "icmp:labelsContext=traffic_direction",
		"http:exemplars=true;sourceContext=pod", "httpV2:destinationContext=workload", "dns:query;ignoreAAAA;labelsContext=source_namespace",
		"port-distribution:sourceContext=cluster;;", "drop:sourceContext=", "drop:x=y", "flow:sourceContext=pod;sourceContext=pod",
		"drop:labelsContext=source_pod,,source_pod", "flow:", ":", "drop:sourceContext=POD|Workload",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		specs := strings.Fields(s)
		cfg, err := Parse(specs)
		if err != nil {
			return
		}
		again, err := Parse(strings.Fields(cfg.String()))
		if err != nil {
			t.Fatalf("%q parsed, its String %q does not: %v", s, cfg.String(), err)
		}
		if !reflect.DeepEqual(cfg, again) {
			t.Fatalf("%q: %+v, after String and Parse %+v", s, cfg, again)
		}
		if _, err := New(cfg, prometheus.NewRegistry()); err != nil {
			t.Fatalf("%q parsed but does not register: %v", s, err)
		}
	})
}
