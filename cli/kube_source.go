package cli

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/clustermesh/clustermesh/k8ssource"
	"github.com/clustermesh/clustermesh/statesource"
)

// newKubeClient returns a client for the cluster a mesh component runs in:
// in a pod, the in-cluster config and its service account (the role enable
// or manifests creates); outside, kubeconfig and context.
func newKubeClient(kubeconfig, context string) (kubernetes.Interface, error) {
	cfg, err := kubeRESTConfig(kubeconfig, context)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// kubeRESTConfig is the config of newKubeClient's cluster: in a pod (no
// kubeconfig, no context), the in-cluster config; else kubeconfig's context.
func kubeRESTConfig(kubeconfig, context string) (*rest.Config, error) {
	if kubeconfig == "" && context == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("not in a pod (%w): pass --kubeconfig", err)
		}
		return c, nil
	}
	t, err := (&kubeFlags{kubeconfig: kubeconfig}).target(context)
	if err != nil {
		return nil, err
	}
	return t.Config, nil
}

// newKubeStateSource returns the Kubernetes state source (k8ssource) of
// 'clustermesh apiserver --state-source=kubernetes' (and of an agent's local
// services), with newKubeClient's client.
func newKubeStateSource(kubeconfig, context string, log *slog.Logger) (statesource.Source, error) {
	cs, err := newKubeClient(kubeconfig, context)
	if err != nil {
		return nil, fmt.Errorf("kubernetes state source: %w", err)
	}
	return &k8ssource.Source{Client: cs, Logger: log}, nil
}

// serviceAccountNamespaceFile holds a pod's namespace.
const serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// kubeNamespace is flag, else the pod's namespace, else the default one.
func kubeNamespace(flag string) string {
	if flag != "" {
		return flag
	}
	if b, err := os.ReadFile(serviceAccountNamespaceFile); err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b))
	}
	return defaultKubeNamespace
}
