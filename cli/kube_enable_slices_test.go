package cli

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/kubemesh"
)

// 'clustermesh enable --endpoint-slices' deploys the slices writer and says
// so; --clusterset-ip-range alone is refused; disable removes the writer.
func TestK8sEnableEndpointSlicesCommand(t *testing.T) {
	env := kubetest.Start(t, "east")
	east := env.Cluster("east")
	ctx := context.Background()
	err := kubeRunErr(t, env, "enable", "--context", "east", "--cluster-name", "east", "--cluster-id", "1", "--clusterset-ip-range", "10.96.128.0/20")
	if err == nil || !strings.Contains(err.Error(), "--endpoint-slices") {
		t.Errorf("--clusterset-ip-range alone: %v", err)
	}
	out := kubeRun(t, env, "enable", "--context", "east", "--cluster-name", "east", "--cluster-id", "1", "--endpoint-slices")
	for _, want := range []string{"deployment/" + kubemesh.SlicesName + " created", "serviceaccount/" + kubemesh.SlicesName + " created",
		"cluster east (id 1) enabled"} {
		if !strings.Contains(out, want) {
			t.Errorf("enable --endpoint-slices output lacks %q:\n%s", want, out)
		}
	}
	if _, err := east.Client.AppsV1().Deployments(defaultKubeNamespace).Get(ctx, kubemesh.SlicesName, metav1.GetOptions{}); err != nil {
		t.Fatalf("the writer's deployment: %v", err)
	}
	out = kubeRun(t, env, "disable", "--context", "east")
	if !strings.HasPrefix(out, "deployment/"+kubemesh.SlicesName+" deleted\n") {
		t.Errorf("disable output does not start with the writer's deployment:\n%s", out)
	}
}
