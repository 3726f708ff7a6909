package cli

import (
	"context"
	"strings"
	"testing"
)

// 'clustermesh manifests' prints the agent's objects as YAML, saying what
// the agent needs: the Kubernetes source, the remotes secret, bpffs,
// privileges, the role of its status report.
func TestKubeManifestsCommand(t *testing.T) {
	out, err := run(context.Background(), "manifests", "--cluster-name", "east", "--cluster-id", "1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kind: DaemonSet", "kind: ClusterRole", "--state-source=kubernetes", "--cluster-id=1",
		"secretName: " + remotesSecretName, "path: /sys/fs/bpf", "privileged: true", "hostNetwork: true",
		"kind: Role", "leases", "--node-name=$(NODE_NAME)", "fieldPath: spec.nodeName"} {
		if !strings.Contains(out, want) {
			t.Errorf("manifests lack %q", want)
		}
	}
	if strings.Contains(out, "--policy-from-kubernetes") {
		t.Error("the agents enforce the cluster's policies without --enforce-policy")
	}
	if out, err := run(context.Background(), "manifests", "--cluster-name", "east", "--cluster-id", "1", "--enforce-policy"); err != nil ||
		!strings.Contains(out, "--policy-from-kubernetes") || !strings.Contains(out, "networkpolicies") {
		t.Errorf("manifests --enforce-policy: %v, want the agent's --policy-from-kubernetes and its RBAC", err)
	}
	if _, err := run(context.Background(), "manifests", "--cluster-name", "east", "--cluster-id", "0"); err == nil {
		t.Error("cluster id 0 accepted")
	}
}
