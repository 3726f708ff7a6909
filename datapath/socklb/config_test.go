package socklb

import (
	"testing"

	"github.com/clustermesh/clustermesh/datapath/internal/dptest"
)

// TestConfig: the size option is checked against its bounds, named in the
// errors, and its default applied to a zero field.
func TestConfig(t *testing.T) {
	dptest.SizeOptions(t, SizeOptions(), Config.Validate)
	if c := (Config{}).withDefaults(); c.MaxSockRevNAT != DefaultMaxSockRevNAT {
		t.Errorf("defaults: %+v", c)
	}
	if o, unit, ok := sizes(RevNATMapName); !ok || o != "--max-sock-revnat-entries (Config.MaxSockRevNAT)" || unit != "entries" {
		t.Errorf("sizes(%s) = %q, %q, %v", RevNATMapName, o, unit, ok)
	}
}
