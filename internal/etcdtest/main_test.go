package etcdtest

import (
	"testing"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// TestMain fails the run if the tests leave goroutines, file descriptors,
// bpf pins, network namespaces or cgroups behind (testenv.Main).
func TestMain(m *testing.M) { testenv.Main(m) }
