package cli

import (
	"fmt"
	"log/slog"

	"k8s.io/client-go/kubernetes"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/clustermesh/clustermesh/k8ssource"
	"github.com/clustermesh/clustermesh/kubemesh"
	"github.com/clustermesh/clustermesh/statesource"
)

// defaultKubeNamespace is the namespace clustermesh runs in by default.
const defaultKubeNamespace = kubemesh.DefaultNamespace

// newKubeClient returns a client for the cluster a mesh component runs in:
// in a pod, the in-cluster config and its service account (the role enable
// or manifests creates); outside, kubeconfig and context.
func newKubeClient(kubeconfig, context string) (kubernetes.Interface, error) {
	return newKubeClientRate(kubeconfig, context, 0, 0)
}

// newKubeClientRate is newKubeClient with client-go's request rate limit
// (queries per second and burst; zero: client-go's 5 and 10). A controller
// that writes several objects per change (the slices writer and the MCS
// controller share one client) would otherwise wait 200 ms per request
// past the burst.
func newKubeClientRate(kubeconfig, context string, qps float32, burst int) (kubernetes.Interface, error) {
	cfg, err := kubemesh.RESTConfig(kubeconfig, context)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = qps, burst
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("building the Kubernetes client: %w", err)
	}
	mcs, err := mcsclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("building the MCS API client: %w", err)
	}
	return &kubeClient{Clientset: cs, mcs: mcs}, nil
}

// kubeClient is a Kubernetes client that also reaches the MCS API
// (k8ssource.MCSClientProvider: the state source reads ServiceExports).
type kubeClient struct {
	*kubernetes.Clientset
	mcs mcsclient.Interface
}

// MCS returns the MCS API client.
func (c *kubeClient) MCS() mcsclient.Interface { return c.mcs }

// newKubeStateSource returns the Kubernetes state source (k8ssource) of
// 'clustermesh apiserver --state-source=kubernetes' (and of an agent's local
// services), with newKubeClient's client.
func newKubeStateSource(kubeconfig, context string, log *slog.Logger) (statesource.Source, error) {
	cs, err := newKubeClient(kubeconfig, context)
	if err != nil {
		return nil, fmt.Errorf("connecting the Kubernetes state source: %w", err)
	}
	return &k8ssource.Source{Client: cs, Logger: log}, nil
}

// kubeNamespace is flag, else the pod's namespace, else the default one.
func kubeNamespace(flag string) string { return kubemesh.Namespace(flag) }
