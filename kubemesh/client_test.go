package kubemesh

import (
	"os"
	"strings"
	"testing"
)

// Outside a pod, a component needs a kubeconfig, and says so.
func TestKubeRESTConfigOutsidePod(t *testing.T) {
	if os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		t.Skip("in a pod: the in-cluster config would do")
	}
	if _, err := RESTConfig("", ""); err == nil || !strings.Contains(err.Error(), "--kubeconfig") {
		t.Errorf("outside a pod without a kubeconfig: %v", err)
	}
	if _, err := Open("/nonexistent/kubeconfig", ""); err == nil {
		t.Error("a missing kubeconfig opened")
	}
}
