package ciliumagent

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
)

// startKVStoreMeshProcess starts `clustermesh kvstoremesh args...`; it is
// stopped (SIGTERM) when t ends.
func startKVStoreMeshProcess(t *testing.T, args ...string) *apiserver {
	t.Helper()
	p := &apiserver{ready: make(chan string, 1), exited: make(chan struct{})}
	p.cmd = exec.Command(clustermeshBin, append([]string{"kvstoremesh"}, args...)...)
	p.cmd.SysProcAttr = diesWithTest()
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting kvstoremesh: %v", err)
	}
	go p.follow(stderr)
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Errorf("kvstoremesh: %v\n%s", err, p.output())
		}
	})
	return p
}

// TestCiliumAgentReadsOurCache: Cilium's ClusterMesh, as an agent of
// cluster west, reads east through our cache: `clustermesh kvstoremesh` of
// west reads east's apiserver and writes it into west's own apiserver; the
// agent's config for east points at west's apiserver (as remote-west), where
// the cluster config says cached. Cilium must become ready and hold exactly
// what east's state file says, before and after a change.
func TestCiliumAgentReadsOurCache(t *testing.T) {
	dir := t.TempDir()
	certs := issueCerts(t, dir)
	ca := filepath.Join(dir, "ca")
	westBundle := filepath.Join(dir, localName)
	run(t, "ca", "issue", "--ca", ca, "--out", westBundle, "--cluster", localName)

	statePath, stateDir := filepath.Join(dir, "east.yaml"), filepath.Join(dir, "identities")
	writeFile(t, statePath, stateBefore)
	east := startAPIServer(t, apiserverArgs(certs, freeAddr(t), statePath, stateDir, 255)...)

	westState := filepath.Join(dir, "west.yaml")
	writeFile(t, westState, "nodes: []\n")
	west := startAPIServer(t, "--cluster-name", localName, "--cluster-id", fmt.Sprint(localID), "--cert-dir", westBundle,
		"--state-file", westState, "--listen", freeAddr(t), "--metrics-addr", "", "--heartbeat-interval", "2s")

	remotes := t.TempDir()
	writeEtcdConfig(t, remotes, t.TempDir(), clusterName, east.url, certs.caFile,
		filepath.Join(westBundle, "remote-"+localName+".crt"), filepath.Join(westBundle, "remote-"+localName+".key"))
	startKVStoreMeshProcess(t, "--cluster-name", localName, "--cluster-id", fmt.Sprint(localID), "--config-dir", remotes,
		"--cert-dir", westBundle, "--etcd-endpoints", west.url, "--metrics-addr", "")

	a := startCiliumAgent(t, 255)
	a.configure(t, clusterName, west.url, certs.caFile,
		filepath.Join(westBundle, "remote-"+localName+".crt"), filepath.Join(westBundle, "remote-"+localName+".key"))
	a.waitState(t, "the first state, through our cache", wantBefore)
	writeFile(t, statePath, stateAfter)
	a.waitState(t, "the changed state, through our cache", wantAfter)
	if w := a.v.unexpectedWarnings(); w != "" {
		t.Errorf("Cilium warned:\n%s", w)
	}
}
