package cli

import (
	"fmt"
	"maps"
	"slices"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// kubeTarget is one cluster reached through a kubeconfig context.
type kubeTarget struct {
	Context string // the context's name (the current one when not given)
	Client  kubernetes.Interface
	Config  *rest.Config
}

// kubeFlags are the flags that choose a kubeconfig (--kubeconfig, else
// $KUBECONFIG, else ~/.kube/config), as kubectl does.
type kubeFlags struct {
	kubeconfig string
}

func (k *kubeFlags) register(f *pflag.FlagSet) {
	f.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
}

// target returns a client for context (the current context when empty).
func (k *kubeFlags) target(context string) (*kubeTarget, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if k.kubeconfig != "" {
		rules.ExplicitPath = k.kubeconfig
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: context})
	raw, err := cc.RawConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	name := context
	if name == "" {
		name = raw.CurrentContext
	}
	if _, ok := raw.Contexts[name]; !ok || name == "" {
		return nil, fmt.Errorf("kubeconfig: no context %q (contexts: %v): pass --context with one of them, or --kubeconfig", name, contextNames(raw.Contexts))
	}
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig context %s: %w", name, err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig context %s: %w", name, err)
	}
	return &kubeTarget{Context: name, Client: cs, Config: cfg}, nil
}

func contextNames[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
