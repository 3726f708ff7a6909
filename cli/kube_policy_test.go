package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

func TestKubePolicyFlags(t *testing.T) {
	for _, tc := range []struct {
		args         []string
		source, node string
		wantOn       bool
		wantErr      string
	}{
		{nil, "kubernetes", "node-1", false, ""}, // off unless asked
		{[]string{"--policy-from-kubernetes"}, "kubernetes", "node-1", true, ""},
		{nil, "file", "node-1", false, ""},
		{nil, "kubernetes", "", false, ""},
		{[]string{"--policy-from-kubernetes=false"}, "kubernetes", "node-1", false, ""},
		{[]string{"--policy-from-kubernetes"}, "kubernetes", "", false, "needs --node-name"},
		{[]string{"--policy-from-kubernetes"}, "file", "node-1", false, "needs --state-source=kubernetes"},
	} {
		var k kubePolicyFlags
		cmd := &cobra.Command{}
		k.register(cmd)
		if err := cmd.Flags().Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		err := k.check(cmd, tc.source, tc.node)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%v %s %q: err = %v, want %q", tc.args, tc.source, tc.node, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v %s %q: %v", tc.args, tc.source, tc.node, err)
		}
		if got := k.enabled(tc.source, tc.node); got != tc.wantOn {
			t.Errorf("%v %s: enabled = %v, want %v", tc.args, tc.source, got, tc.wantOn)
		}
	}
}

// TestKubePolicyServer: the agent's wiring, with a real API server: a
// NetworkPolicy reaches the enforcer as the "kubernetes" source.
func TestKubePolicyServer(t *testing.T) {
	env := kubetest.Start(t, "east")
	cl := env.Clusters[0]
	ctx, cancel := context.WithCancel(context.Background())
	if err := cl.CreateNamespace(ctx, "shop", nil); err != nil {
		t.Fatal(err)
	}
	enf, err := enforcer.New(enforcer.Config{ClusterName: "east", ClusterID: 1, NodeName: "node-1", Policy: tcpolicy.NewMemory()})
	if err != nil {
		t.Fatal(err)
	}
	w, err := kubePolicyWatcher(env.Kubeconfig, "", enf)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	go func() { done <- w.Run(ctx) }()
	go func() {
		select { // as the agent: the enforcer starts once the objects are in
		case <-w.Synced():
		case <-ctx.Done():
			done <- nil
			return
		}
		done <- enf.Run(ctx, nil)
	}()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	})
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-checkout", Namespace: "shop"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "checkout"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	if _, err := cl.Client.NetworkingV1().NetworkPolicies("shop").Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 20*time.Second, "the NetworkPolicy enforced", func() bool { return enf.Status().Rules == 1 })
	if st := w.Status(); !st.Synced || st.Objects != 1 {
		t.Fatalf("watcher status %+v", st)
	}
	if _, err := kubePolicyWatcher("/nonexistent/kubeconfig", "", enf); err == nil || !strings.Contains(err.Error(), "kubernetes policies") {
		t.Fatalf("a missing kubeconfig: err = %v", err)
	}
}
