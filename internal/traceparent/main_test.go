package traceparent

import (
	"testing"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
