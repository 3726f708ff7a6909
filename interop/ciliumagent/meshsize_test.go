package ciliumagent

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// meshSizeEnv set to 511 runs TestCiliumMeshSize itself; unset, the test
// runs the test binary again with it: Cilium fixes the identity layout of
// its process once (identity.GetClusterIDShift), so a 511-cluster agent
// needs a process of its own.
const meshSizeEnv = "CILIUMAGENT_MESH_SIZE"

// TestCiliumMeshSize: the mesh size (maxConnectedClusters) as Cilium's
// ClusterMesh checks it. A Cilium agent running with 511 clusters reads our
// apiserver run with --max-connected-clusters 511 (identities in the
// 32,768-wide range of the cluster id), and refuses one run with 255,
// saying why.
func TestCiliumMeshSize(t *testing.T) {
	if os.Getenv(meshSizeEnv) != "511" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCiliumMeshSize$", "-test.count=1", "-test.v", "-test.timeout=3m")
		cmd.Env = append(os.Environ(), meshSizeEnv+"=511", binEnv+"="+clustermeshBin)
		cmd.SysProcAttr = diesWithTest()
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestCiliumMeshSize") {
			t.Fatalf("the 511-cluster agent's process: %v\n%s", err, out)
		}
		return
	}
	dir := t.TempDir()
	certs := issueCerts(t, dir)
	statePath := filepath.Join(dir, "east.yaml")
	writeFile(t, statePath, stateBefore)
	wide := startAPIServer(t, apiserverArgs(certs, "127.0.0.1:0", statePath, filepath.Join(dir, "ids-511"), 511)...)
	narrow := startAPIServer(t, apiserverArgs(certs, "127.0.0.1:0", statePath, filepath.Join(dir, "ids-255"), 255)...)

	a := startCiliumAgent(t, 511)
	a.configure(t, clusterName, wide.url, certs.caFile, certs.shared[0], certs.shared[1])
	a.waitState(t, "the state of a 511-cluster apiserver", wantBefore)
	if w := a.v.unexpectedWarnings(); w != "" {
		t.Errorf("Cilium warned:\n%s", w)
	}

	// The same cluster, now served by an apiserver of a 255-cluster mesh:
	// Cilium connects, reads the cluster config, refuses it ("mismatched
	// MaxConnectedClusters; local=511, remote=255", which ValidateRemoteConfig
	// returns in interop/cilium_reads_test.go; remoteCluster's warning with
	// it and the failure count are lost to its own context cancellation)
	// and reconnects, never ready.
	const found = "Found remote cluster configuration"
	before := a.v.count(found)
	a.configure(t, clusterName, narrow.url, certs.caFile, certs.shared[0], certs.shared[1])
	a.v.waitFor(t, "the 255-cluster apiserver refused three times", func(v *view) error {
		for _, c := range a.cm.Status().Clusters {
			switch {
			case c.Name != clusterName:
			case c.Ready:
				return fmt.Errorf("cluster %s ready", c.Name)
			case c.Config == nil || !c.Config.Retrieved || c.Config.ClusterID != clusterID:
				return fmt.Errorf("cluster %s: config %+v", c.Name, c.Config)
			case v.count(found) < before+3:
				return fmt.Errorf("cluster %s: config read %d times", c.Name, v.count(found)-before)
			default:
				return nil
			}
		}
		return fmt.Errorf("cluster %s unknown to Cilium", clusterName)
	})
}
