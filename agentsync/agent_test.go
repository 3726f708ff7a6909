package agentsync

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/statesource"
)

// Run returns its error (it does not hang waiting for goroutines that still
// run on a live context).
func TestRunReturnsErrors(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state.yaml")
	if err := os.WriteFile(state, []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]Config{
		"missing config dir": {ConfigDir: filepath.Join(dir, "missing"), LocalSource: &statesource.File{Path: state}},
		"missing state file": {ConfigDir: dir, LocalSource: &statesource.File{Path: filepath.Join(dir, "nope.yaml")}},
	} {
		cfg.ClusterName, cfg.ClusterID, cfg.Datapath = "east", 1, datapath.NewMemory()
		a, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- a.Run(context.Background()) }()
		select {
		case err := <-done:
			if err == nil || !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: Run returned %v, want a not-exist error", name, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: Run did not return", name)
		}
	}
}
