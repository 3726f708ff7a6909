package datapath

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// TestConfigValidate: every size is checked against its bounds, and the
// error names the agent's flag an operator changes.
func TestConfigValidate(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("the zero config (all defaults): %v", err)
	}
	for _, o := range SizeOptions() {
		for _, tc := range []struct {
			v  uint32
			ok bool
		}{{0, true}, {o.Min, true}, {o.Max, true}, {o.Min - 1, o.Min == 1}, {o.Max + 1, false}} {
			var c Config
			*o.Of(&c) = tc.v
			err := c.Validate()
			switch {
			case tc.ok && err != nil:
				t.Errorf("%s = %d: %v", o, tc.v, err)
			case !tc.ok && (!errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "--"+o.Flag)):
				t.Errorf("%s = %d: %v, want %v naming --%s", o, tc.v, err, ErrInvalidConfig, o.Flag)
			}
		}
	}
	c := Config{PinDir: "relative"}
	if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("relative pin dir: %v", err)
	}
	c = Config{MaxIPCache: 1 << 30, MaxBackends: 1 << 30}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--max-ipcache-entries") || !strings.Contains(err.Error(), "--max-backend-entries") {
		t.Errorf("two sizes out of bounds: %v, want both named", err)
	}
}

// TestSizeOptions: every map whose size is not fixed by its layout takes it
// from a Config field with an option: flags named alike, the default applied
// to a zero field, each value reaching the map's definition.
func TestSizeOptions(t *testing.T) {
	flag := regexp.MustCompile(`^(max-[a-z-]+-entries|[a-z-]+-bytes)$`)
	var c Config
	seen := map[*uint32]bool{}
	for i, o := range SizeOptions() {
		if !flag.MatchString(o.Flag) || o.Usage == "" || o.Default < o.Min || o.Default > o.Max {
			t.Errorf("option %+v", o)
		}
		p := o.Of(&c)
		if seen[p] {
			t.Errorf("%s sets a field another option sets", o)
		}
		seen[p] = true
		if d := o.Of(new(Config{}.withDefaults())); *d != o.Default {
			t.Errorf("%s defaults to %d, want %d", o, *d, o.Default)
		}
		*p = o.Min + uint32(i) + 1 // distinct values, to see each reach its map
	}
	specs := mapSpecs(c)
	sized := 0
	for _, spec := range specs {
		o, ok := SizeOptionOf(sizeOptions, spec.Name)
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
}
