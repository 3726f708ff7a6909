package ciliumagent

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/cilium/cilium/pkg/labelsfilter"
	"github.com/cilium/cilium/pkg/testutils"
)

// TestMain builds (or finds) the clustermesh binary, sets up the agent's
// identity-relevant label filter as with no --labels option, and fails the
// run if a goroutine outlives the tests (Cilium's goleak options: the
// repository's testenv is in a module this one cannot require).
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ciliumagent-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if clustermeshBin, err = buildBinary(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := labelsfilter.ParseLabelPrefixCfg(slog.New(slog.NewTextHandler(io.Discard, nil)), nil, nil, ""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testutils.GoleakVerifyTestMain(m, testutils.GoleakCleanup(func(int) { os.RemoveAll(dir) }))
}
