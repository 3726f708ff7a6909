package kubemesh

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// fakeAgent is an agent's status that the test changes.
type fakeAgent struct {
	mu sync.Mutex
	st agentsync.Status
}

func (f *fakeAgent) status() agentsync.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

func (f *fakeAgent) set(st agentsync.Status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st = st
}

// agentClient enables east and applies the agent's manifests, and returns
// a client that acts as the agent's service account.
func agentClient(t *testing.T, env *kubetest.Env) kubernetes.Interface {
	t.Helper()
	ctx := context.Background()
	if _, err := Enable(ctx, EnableOptions{Kubeconfig: env.Kubeconfig, Context: "east", ClusterName: "east", ClusterID: 1}); err != nil {
		t.Fatal(err)
	}
	target, err := Open(env.Kubeconfig, "east")
	if err != nil {
		t.Fatal(err)
	}
	a, err := newApplier(target, "")
	if err != nil {
		t.Fatal(err)
	}
	objs, err := AgentManifests(ManifestsOptions{ClusterName: "east", ClusterID: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range objs {
		if _, err := a.apply(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	kubeconfig, err := env.ServiceAccountKubeconfig(DefaultNamespace, AgentName)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := Open(kubeconfig, "east")
	if err != nil {
		t.Fatal(err)
	}
	return agent.Client
}

// startReporter runs a reporter until the test ends, or stop is called;
// stop returns Run's error.
func startReporter(t *testing.T, cfg AgentReporterConfig) (stop func() error) {
	t.Helper()
	r, err := NewAgentReporter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() { stop() })
	return stop
}

// Two agents report under the role of the agent's manifests (RBAC
// enforced): the status sums up the remotes configured and connected per
// agent, each remote's last error and the global services' remote backends
// across agents; a change is reported, a report not renewed is stale, and a
// clean exit removes the report.
func TestK8sAgentReports(t *testing.T) {
	env := kubetest.StartWith(t, kubetest.Options{RBAC: true}, "east")
	east := env.Cluster("east")
	ctx := context.Background()
	ns := DefaultNamespace
	client := agentClient(t, env)

	checkout := func(west, north int) agentsync.ServiceStatus {
		return agentsync.ServiceStatus{Namespace: "shop", Name: "checkout", Remote: map[string]int{"west": west, "north": north}}
	}
	e1, e2 := &fakeAgent{}, &fakeAgent{}
	e1.set(agentsync.Status{Cluster: "east", Remotes: []agentsync.RemoteStatus{
		{Name: "west", Connected: true, Ready: true}, {Name: "north", Connected: true, Ready: true},
	}, Services: []agentsync.ServiceStatus{checkout(2, 1)}})
	e2.set(agentsync.Status{Cluster: "east", Remotes: []agentsync.RemoteStatus{
		{Name: "west", Connected: true, Ready: false}, {Name: "north", LastError: "dial tcp 192.0.2.9:2379: connection refused"},
	}, Services: []agentsync.ServiceStatus{checkout(2, 0)}})
	// e1 with the defaults (its status does not change here), e2 with a
	// short interval.
	startReporter(t, AgentReporterConfig{Client: client, Node: "e1", Status: e1.status})
	stop2 := startReporter(t, AgentReporterConfig{Client: client, Namespace: ns, Node: "e2", Status: e2.status, MinInterval: 50 * time.Millisecond})

	agents := func() AgentsSummary {
		st, err := ReadStatus(ctx, StatusOptions{Kubeconfig: env.Kubeconfig, Context: "east"})
		if err != nil {
			t.Fatal(err)
		}
		return st.Agents
	}
	var sum AgentsSummary
	testenv.WaitFor(t, 10*time.Second, "both agents reporting", func() bool {
		sum = agents()
		return sum.Reporting == 2
	})
	north := RemoteAgents{Name: "north", Configured: 2, Connected: 1, Synced: 1, LastError: "dial tcp 192.0.2.9:2379: connection refused", ErrorNode: "e2"}
	if sum.Configured != (Spread{Min: 2, Avg: 2, Max: 2}) || sum.Connected != (Spread{Min: 1, Avg: 1.5, Max: 2}) || sum.Synced != (Spread{Min: 0, Avg: 1, Max: 2}) ||
		len(sum.PerRemote) != 2 || sum.PerRemote[0] != north || sum.PerRemote[1] != (RemoteAgents{Name: "west", Configured: 2, Connected: 2, Synced: 1}) ||
		len(sum.Services) != 1 || sum.Services[0] != (ServiceBackends{Namespace: "shop", Name: "checkout", Min: 2, Max: 3, Agents: 2}) {
		t.Errorf("agents: %+v", sum)
	}

	// e2 connects to north: reported within the interval.
	e2.set(agentsync.Status{Cluster: "east", Remotes: []agentsync.RemoteStatus{
		{Name: "west", Connected: true, Ready: true}, {Name: "north", Connected: true, Ready: true},
	}, Services: []agentsync.ServiceStatus{checkout(2, 1)}})
	testenv.WaitFor(t, 10*time.Second, "e2's change reported", func() bool {
		sum := agents()
		return sum.Connected == Spread{Min: 2, Avg: 2, Max: 2} && sum.Synced.Min == 2
	})

	// A node whose agent died without cleaning up: its report goes stale.
	old := metav1.NewMicroTime(time.Now().Add(-10 * time.Minute))
	ninety, holder := int32(90), "e3"
	if _, err := east.Client.CoordinationV1().Leases(ns).Create(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: agentReportName("e3"), Labels: map[string]string{"app.kubernetes.io/part-of": "clustermesh", "app.kubernetes.io/component": agentReportComponent},
			Annotations: map[string]string{agentReportAnnotation: `{"node":"e3","cluster":"east","remotes":[]}`}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &ninety, RenewTime: &old},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if sum := agents(); sum.Reporting != 2 || len(sum.Stale) != 1 || sum.Stale[0] != "e3" {
		t.Errorf("agents with a stale report: %+v", sum)
	}

	// e2 exits cleanly: its report is gone.
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
	if _, err := east.Client.CoordinationV1().Leases(ns).Get(ctx, agentReportName("e2"), metav1.GetOptions{}); err == nil {
		t.Error("e2's report outlived its agent")
	}
	if sum := agents(); sum.Reporting != 1 {
		t.Errorf("after e2 exited: %+v", sum)
	}
}

// A reporter needs its client, node and status; a node name too long for
// an object name ends in a hash.
func TestKubeAgentReporterConfig(t *testing.T) {
	for _, cfg := range []AgentReporterConfig{
		{Node: "n1", Status: func() agentsync.Status { return agentsync.Status{} }},
		{Client: &kubernetes.Clientset{}, Status: func() agentsync.Status { return agentsync.Status{} }},
		{Client: &kubernetes.Clientset{}, Node: "n1"},
	} {
		if _, err := NewAgentReporter(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	if n := agentReportName(strings.Repeat("n", 300)); len(n) != 253 || !strings.HasPrefix(n, AgentName+"-nnn") {
		t.Errorf("long node name: %d %q", len(n), n)
	}
}
