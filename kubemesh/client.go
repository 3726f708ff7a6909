package kubemesh

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Target is one cluster reached through a kubeconfig context.
type Target struct {
	Context string // the context's name (the current one when none was asked for)
	Client  kubernetes.Interface
	Config  *rest.Config
}

// Open returns a client for context of kubeconfig, or for its current
// context when context is empty. An empty kubeconfig is kubectl's:
// $KUBECONFIG, else ~/.kube/config.
func Open(kubeconfig, context string) (*Target, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: context})
	raw, err := cc.RawConfig()
	if err != nil {
		return nil, fmt.Errorf("loading the kubeconfig: %w", err)
	}
	name := context
	if name == "" {
		name = raw.CurrentContext
	}
	if _, ok := raw.Contexts[name]; !ok || name == "" {
		return nil, fmt.Errorf("the kubeconfig has no context %q (contexts: %v): pass --context with one of them, or --kubeconfig",
			name, slices.Sorted(maps.Keys(raw.Contexts)))
	}
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("reading kubeconfig context %s: %w", name, err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("building the client of kubeconfig context %s: %w", name, err)
	}
	return &Target{Context: name, Client: cs, Config: cfg}, nil
}

// RESTConfig is the config of the cluster a mesh component runs in: in a
// pod (no kubeconfig and no context given), the in-cluster config and its
// service account (the role Enable or AgentManifests creates); else
// kubeconfig's context, as Open resolves it.
func RESTConfig(kubeconfig, context string) (*rest.Config, error) {
	if kubeconfig == "" && context == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("reading the in-cluster config: not in a pod (%w): pass --kubeconfig", err)
		}
		return c, nil
	}
	t, err := Open(kubeconfig, context)
	if err != nil {
		return nil, err
	}
	return t.Config, nil
}

// serviceAccountNamespaceFile holds a pod's namespace.
const serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// Namespace is namespace when given, else the pod's namespace (in a pod),
// else DefaultNamespace.
func Namespace(namespace string) string {
	if namespace != "" {
		return namespace
	}
	if b, err := os.ReadFile(serviceAccountNamespaceFile); err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b))
	}
	return DefaultNamespace
}

// orDefault is s, or def when s is empty.
func orDefault[T comparable](s, def T) T {
	var zero T
	if s == zero {
		return def
	}
	return s
}

// splitList splits a comma-separated value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
