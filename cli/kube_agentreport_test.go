package cli

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/kubemesh"
)

// The agent's report flags: off without the Kubernetes source or with a zero
// interval; the node's name from --node-name, else $NODE_NAME.
func TestAgentReportFlags(t *testing.T) {
	var f agentReportFlags
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	f.register(fs)
	if err := fs.Parse([]string{"--report-namespace", "mesh"}); err != nil || f.interval != kubemesh.DefaultReportMinInterval {
		t.Fatalf("defaults: %+v %v", f, err)
	}
	status := func() AgentStatus { return AgentStatus{} }
	if srv, err := f.server("file", "", "", "n1", status); srv != nil || err != nil {
		t.Errorf("file source: %v %v", srv != nil, err)
	}
	if _, err := f.server("kubernetes", "/nonexistent/kubeconfig", "", "n1", status); err == nil || !strings.Contains(err.Error(), "agent report") {
		t.Errorf("bad kubeconfig: %v", err)
	}
	if err := fs.Parse([]string{"--report-interval", "0"}); err != nil {
		t.Fatal(err)
	}
	if srv, err := f.server("kubernetes", "", "", "n1", status); srv != nil || err != nil {
		t.Errorf("--report-interval 0: %v %v", srv != nil, err)
	}
}

// status --context prints the agents' reports summed up: remotes per agent,
// each remote's agents and last error, each global service's remote
// backends, stale reports; and what the apiserver waits for.
func TestKubeStatusPrint(t *testing.T) {
	st := kubemesh.Status{Context: "east", Namespace: "mesh", Cluster: "east", ClusterID: 1, DesiredReplicas: 1,
		ServiceType: "LoadBalancer", Peers: []string{"west"}, Remotes: map[string]string{"west": "https://192.0.2.2:2379"},
		Waiting: []string{"deployment mesh/clustermesh-apiserver: 0/1 replicas ready"},
		Agents: kubemesh.AgentsSummary{Reporting: 2, Stale: []string{"e3"},
			Configured: kubemesh.Spread{Min: 2, Avg: 2, Max: 2}, Connected: kubemesh.Spread{Min: 1, Avg: 1.5, Max: 2}, Synced: kubemesh.Spread{Min: 0, Avg: 1, Max: 2},
			PerRemote: []kubemesh.RemoteAgents{
				{Name: "north", Configured: 2, Connected: 1, Synced: 1, LastError: "dial tcp 192.0.2.9:2379: connection refused", ErrorNode: "e2"},
				{Name: "west", Configured: 2, Connected: 2, Synced: 1},
			},
			Services: []kubemesh.ServiceBackends{{Namespace: "shop", Name: "checkout", Min: 2, Max: 3, Agents: 2}},
		}}
	var b strings.Builder
	if err := printKubeStatus(&b, st, false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Cluster east (id 1), context east, namespace mesh",
		"apiserver:  0/1 ready, service LoadBalancer, endpoint -",
		"peers:      west (may read this cluster)",
		"remotes:    west at https://192.0.2.2:2379",
		"agents:     2 reporting, 1 stale (not renewed: e3)",
		"remotes per agent (min/avg/max): configured 2/2.0/2, connected 1/1.5/2, synced 0/1.0/2",
		"north: connected on 1/2 agents, synced on 1; last error on e2: dial tcp 192.0.2.9:2379: connection refused",
		"west: connected on 2/2 agents, synced on 1\n",
		"services:   shop/checkout: remote backends min 2, max 3 across 2 agents",
		"not ready: deployment mesh/clustermesh-apiserver: 0/1 replicas ready",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	printAgents(&b, kubemesh.AgentsSummary{Error: "listing the agents' status reports (leases in mesh): forbidden"})
	if !strings.Contains(b.String(), "agents:     unknown: listing the agents' status reports") {
		t.Errorf("agents unknown:\n%s", b.String())
	}
}
