package cli

import (
	"fmt"
	"log/slog"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/clustermesh/clustermesh/k8ssource"
	"github.com/clustermesh/clustermesh/statesource"
)

// newKubeStateSource returns the Kubernetes state source (k8ssource) of
// 'clustermesh apiserver --state-source=kubernetes' (and of an agent's local
// services): in a pod, the in-cluster config and its service account (the
// role enable creates); outside, --kubeconfig and --context.
func newKubeStateSource(kubeconfig, context string, log *slog.Logger) (statesource.Source, error) {
	var cfg *rest.Config
	if kubeconfig == "" && context == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes state source: not in a pod (%w): pass --kubeconfig", err)
		}
		cfg = c
	} else {
		t, err := (&kubeFlags{kubeconfig: kubeconfig}).target(context)
		if err != nil {
			return nil, fmt.Errorf("kubernetes state source: %w", err)
		}
		cfg = t.Config
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes state source: %w", err)
	}
	return &k8ssource.Source{Client: cs, Logger: log}, nil
}
