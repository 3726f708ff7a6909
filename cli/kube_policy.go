package cli

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/k8spolicy"
	"github.com/clustermesh/clustermesh/kubemesh"
	"github.com/clustermesh/clustermesh/policy"
)

// kubePolicySource is the policy source name of the cluster's objects in
// the enforcer.
const kubePolicySource = "kubernetes"

// kubePolicyFlags choose whether the agent enforces the cluster's
// NetworkPolicy and CiliumNetworkPolicy objects.
type kubePolicyFlags struct {
	fromKubernetes bool
}

func (k *kubePolicyFlags) register(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&k.fromKubernetes, "policy-from-kubernetes", false,
		"with --state-source=kubernetes and --node-name: enforce the cluster's NetworkPolicy and CiliumNetworkPolicy objects on this node's pods (an invalid object keeps its last valid version; see docs/policy.md). Off by default: the cluster's CNI may enforce them already, and a mesh agent should not start dropping traffic unasked")
}

// enabled: the agent reads policies from the cluster (asked for, with the
// Kubernetes state source and a node to enforce on).
func (k *kubePolicyFlags) enabled(stateSource, nodeName string) bool {
	return k.fromKubernetes && stateSource == "kubernetes" && nodeName != ""
}

// check refuses an explicit --policy-from-kubernetes that cannot be
// honoured: without the Kubernetes state source, or without --node-name.
func (k *kubePolicyFlags) check(cmd *cobra.Command, stateSource, nodeName string) error {
	if !cmd.Flags().Changed("policy-from-kubernetes") || !k.fromKubernetes {
		return nil
	}
	if stateSource != "kubernetes" {
		return fmt.Errorf("--policy-from-kubernetes needs --state-source=kubernetes")
	}
	if nodeName == "" {
		return fmt.Errorf("--policy-from-kubernetes needs --node-name: the node's name, whose endpoints this agent enforces")
	}
	return nil
}

// kubePolicyWatcher returns the watcher of the cluster's policy objects,
// which gives every object's last valid version to enf (source
// "kubernetes"); its Run is a server for runAll, its Status, Collector and
// Synced are for the agent's status, its metrics and its enforcer's start.
func kubePolicyWatcher(kubeconfig, kubeContext string, enf *enforcer.Enforcer) (*k8spolicy.Watcher, error) {
	cfg, err := kubemesh.RESTConfig(kubeconfig, kubeContext)
	if err != nil {
		return nil, fmt.Errorf("watching kubernetes policies: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("watching kubernetes policies: building the client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("watching kubernetes policies: building the dynamic client: %w", err)
	}
	w, err := k8spolicy.New(k8spolicy.Config{
		Client: cs, Dynamic: dyn, Options: enf.PolicyOptions(),
		OnChange: func(c *policy.Compiled) { enf.SetPolicies(kubePolicySource, c) },
		Logger:   slog.Default(),
	})
	if err != nil {
		return nil, err
	}
	return w, nil
}
