package flowmask

import (
	"strings"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

func TestFieldMask(t *testing.T) {
	m, paths, err := Compile([]string{"flow.source.namespace", "source", "l4.UDP", "IP.source"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(paths, ",") != "IP.source,l4.UDP,source" {
		t.Errorf("normalized paths = %q", paths)
	}
	f := &flowpb.Flow{Verdict: flowpb.Verdict_DROPPED, // TCP: l4.UDP keeps nothing
		IP:     &flowpb.IP{Source: "10.1.2.3", Destination: "10.4.5.6"},
		L4:     &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{DestinationPort: 8080}}},
		Source: &flowpb.Endpoint{Namespace: "shop", PodName: "frontend-1"}}
	got := m.Apply(f)
	if got.GetL4() != nil || got.GetSource().GetPodName() != "frontend-1" || got.GetIP().GetSource() != "10.1.2.3" ||
		got.GetIP().GetDestination() != "" || got.GetVerdict() != flowpb.Verdict_VERDICT_UNKNOWN {
		t.Errorf("masked flow = %v", got)
	}
	if _, _, err := Compile([]string{"verdict.x"}); err == nil {
		t.Error("a path below a scalar field was accepted")
	}
	var none Mask
	if none.Apply(f) != f {
		t.Error("an empty mask copies the flow")
	}
}

// FuzzParseConfig: any file parses or is refused with ErrInvalidConfig, and
// what parses has unique names and paths.

func FuzzCompile(f *testing.F) {
	f.Add("source.namespace,verdict")
	f.Add("flow.l4.TCP.flags,IP")
	f.Fuzz(func(t *testing.T, paths string) {
		m, _, err := Compile(strings.Split(paths, ","))
		if err != nil {
			return
		}
		m.Apply(&flowpb.Flow{Verdict: flowpb.Verdict_FORWARDED, Source: &flowpb.Endpoint{Namespace: "a"}})
	})
}
