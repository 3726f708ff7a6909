package tcpolicy

import (
	"errors"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/internal/dptest"
)

// TestConfig: every size is checked against its bounds and named in the
// errors; the ring buffer must be a power of two; each value reaches its
// map's definition, and every map whose size is not fixed has an option.
func TestConfig(t *testing.T) {
	dptest.SizeOptions(t, SizeOptions(), Config.Validate)
	c := Config{FlowRingBytes: 3 << 12}
	if err := c.Validate(); !errors.Is(err, datapath.ErrInvalidConfig) || !strings.Contains(err.Error(), "--flow-ring-bytes") {
		t.Errorf("FlowRingBytes %d: %v", c.FlowRingBytes, err)
	}

	c = Config{MaxPolicy: 11, MaxPolicyCT: 12, MaxPolicyEndpoints: 13, FlowRingBytes: 1 << 14}
	sized := 0
	for _, spec := range mapSpecs(c) {
		o, ok := datapath.SizeOptionOf(sizeOptions, spec.Name)
		switch {
		case ok && spec.MaxEntries != *o.Of(&c):
			t.Errorf("%s: max_entries %d, %s is %d", spec.Name, spec.MaxEntries, o, *o.Of(&c))
		case ok:
			sized++
		case spec.Type != ebpf.Array && spec.Type != ebpf.PerCPUArray:
			t.Errorf("%s (%v, %d entries) has no size option", spec.Name, spec.Type, spec.MaxEntries)
		}
	}
	if sized != len(SizeOptions()) {
		t.Errorf("%d maps sized by options, want %d", sized, len(SizeOptions()))
	}
	if d := (Config{}).withDefaults(); d != (Config{DefaultMaxPolicy, DefaultMaxPolicyCT, DefaultMaxPolicyEndpoints, DefaultFlowRingBytes}) {
		t.Errorf("defaults %+v", d)
	}
}
