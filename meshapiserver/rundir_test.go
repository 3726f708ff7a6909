package meshapiserver

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestRunDirsStartingTogether: apiservers starting at the same moment in
// one runtime directory (the scale rig starts them in parallel) each get a
// directory of their own that the others' sweeps leave alone; a dead one's
// directory is removed by the next start.
func TestRunDirsStartingTogether(t *testing.T) {
	parent := filepath.Join(t.TempDir(), "run")
	log := slog.New(slog.DiscardHandler)
	for round := range 20 {
		const n = 8
		dirs := make([]*runDir, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { dirs[i], errs[i] = openRunDir(parent, "c", log) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: start %d: %v", round, i, err)
			}
			if _, err := os.Stat(filepath.Join(dirs[i].path, runLockFile)); err != nil {
				t.Fatalf("round %d: start %d's directory was removed by another's sweep: %v", round, i, err)
			}
		}
		// Dead: their locks released, their directories left behind.
		for _, d := range dirs {
			d.lock.Close()
		}
	}
	last, err := openRunDir(parent, "c", log)
	if err != nil {
		t.Fatal(err)
	}
	defer last.close()
	entries, _ := os.ReadDir(parent)
	if len(entries) != 1 || strings.HasPrefix(entries[0].Name(), ".") {
		t.Errorf("after the dead ones' directories were swept, %s holds %d entries, want the live one", parent, len(entries))
	}
}
