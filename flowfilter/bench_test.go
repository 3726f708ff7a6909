package flowfilter

import (
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// benchFilters is an exporter's realistic set: drops out of a namespace,
// traffic to two apps on one port, TCP from the pod range; minus DNS and
// health checks.
var benchAllow = []string{
	`{"source_pod":["shop/"],"verdict":["DROPPED"]}`,
	`{"destination_label":["k8s:app in (checkout, payment)"],"destination_port":["8080"]}`,
	`{"source_ip":["10.0.0.0/8"],"protocol":["tcp"],"node_name":["east/*"]}`,
}

var benchDeny = []string{
	`{"destination_port":["53"]}`,
	`{"source_label":["reserved:health"]}`,
}

// BenchmarkMatch reports ns per flow over the six sample flows in turn.
func BenchmarkMatch(b *testing.B) {
	f, err := Compile(parseFilters(b, benchAllow), parseFilters(b, benchDeny))
	if err != nil {
		b.Fatal(err)
	}
	var flows []*flowpb.Flow
	for _, fl := range sampleFlows() {
		flows = append(flows, fl)
	}
	b.ReportAllocs()
	b.ResetTimer()
	matched := 0
	for i := 0; b.Loop(); i++ {
		if f.Match(flows[i%len(flows)]) {
			matched++
		}
	}
	if matched == 0 {
		b.Fatal("the benchmark's filter matched no flow")
	}
}
