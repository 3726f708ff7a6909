package cli

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/kubemesh"
)

// agentReportFlags are the agent's flags of its status report
// (kubemesh.AgentReporter).
type agentReportFlags struct {
	namespace string
	interval  time.Duration
}

func (f *agentReportFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.namespace, "report-namespace", "", "with --state-source=kubernetes: namespace of the status report (lease clustermesh-agent-<node>) that 'clustermesh status --context' reads (default: the pod's, else "+defaultKubeNamespace+")")
	fs.DurationVar(&f.interval, "report-interval", kubemesh.DefaultReportMinInterval, "with --state-source=kubernetes: shortest time between two writes of the status report (it is also renewed every 30s; 0 disables the report)")
}

// server returns the status reporter to run beside an agent that reads
// Kubernetes (stateSource "kubernetes"), nil otherwise. node is the node's
// name (--node-name), else $NODE_NAME, else the host name.
func (f *agentReportFlags) server(stateSource, kubeconfig, kubeContext, node string, status func() AgentStatus) (func(context.Context) error, error) {
	if stateSource != "kubernetes" || f.interval == 0 {
		return nil, nil
	}
	if node == "" {
		node = os.Getenv("NODE_NAME")
	}
	if node == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("the agent report needs the node's name: pass --node-name (%w)", err)
		}
		node = h
	}
	client, err := newKubeClient(kubeconfig, kubeContext)
	if err != nil {
		return nil, fmt.Errorf("starting the agent report: %w", err)
	}
	r, err := kubemesh.NewAgentReporter(kubemesh.AgentReporterConfig{
		Client: client, Namespace: kubeNamespace(f.namespace), Node: node, MinInterval: f.interval,
		Status: func() agentsync.Status { return status().Status },
	})
	if err != nil {
		return nil, fmt.Errorf("starting the agent report: %w", err)
	}
	return r.Run, nil
}
