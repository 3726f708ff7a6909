package cli

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/pflag"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// fakeAgent is an agent's status that the test changes.
type fakeAgent struct {
	mu sync.Mutex
	st AgentStatus
}

func (f *fakeAgent) status() AgentStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

func (f *fakeAgent) set(st agentsync.Status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st = AgentStatus{Status: st}
}

// Two agents report under the role of 'clustermesh manifests' (RBAC
// enforced): status --context shows the peers configured and connected per
// agent, each remote's last error and the global services' remote backends
// across agents; a change is reported, a report not renewed is stale, and a
// clean exit removes the report.
func TestK8sAgentReportsInStatus(t *testing.T) {
	env := kubetest.StartWith(t, kubetest.Options{RBAC: true}, "east")
	east := env.Cluster("east")
	ctx := context.Background()
	ns := defaultKubeNamespace
	kubeRun(t, env, "enable", "--context", "east", "--cluster-name", "east", "--cluster-id", "1")
	manifests, err := run(ctx, "manifests", "--cluster-name", "east", "--cluster-id", "1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kind: Role", "leases", "--node-name=$(NODE_NAME)", "fieldPath: spec.nodeName"} {
		if !strings.Contains(manifests, want) {
			t.Errorf("manifests lack %q", want)
		}
	}
	target, err := (&kubeFlags{kubeconfig: env.Kubeconfig}).target("east")
	if err != nil {
		t.Fatal(err)
	}
	a, err := newApplier(target, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range agentObjects(meshCluster{Namespace: ns, Name: "east", ID: 1, MaxConnected: 255, Image: defaultImage}) {
		if err := a.apply(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	// The agents' client: their service account, as in their pods.
	kubeconfig, err := env.ServiceAccountKubeconfig(ns, agentName)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig}, &clientcmd.ConfigOverrides{CurrentContext: "east"}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	agentClient, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

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

	type running struct {
		cancel context.CancelFunc
		done   chan error
	}
	start := func(node string, f *fakeAgent, reporter func(context.Context) error) running {
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- reporter(rctx) }()
		run := running{cancel, done}
		t.Cleanup(func() {
			cancel()
			<-done
		})
		return run
	}
	// e1 as cli/agent.go runs it (its status does not change here), e2
	// with a short interval.
	start("e1", e1, kubeAgentReporter(agentClient, ns, "e1", e1.status))
	r2 := start("e2", e2, (&agentReporter{Client: agentClient, Namespace: ns, Node: "e2", Status: e2.status, MinInterval: 50 * time.Millisecond}).Run)

	status := func() (string, KubeStatus) {
		text := kubeRun(t, env, "status", "--context", "east")
		var st KubeStatus
		if err := json.Unmarshal([]byte(kubeRun(t, env, "status", "--context", "east", "-o", "json")), &st); err != nil {
			t.Fatal(err)
		}
		return text, st
	}
	var text string
	var st KubeStatus
	testenv.WaitFor(t, 10*time.Second, "both agents reporting", func() bool {
		text, st = status()
		return st.Agents.Reporting == 2
	})
	for _, want := range []string{
		"agents:     2 reporting",
		"remotes per agent (min/avg/max): configured 2/2.0/2, connected 1/1.5/2, synced 0/1.0/2",
		"north: connected on 1/2 agents, synced on 1; last error on e2: dial tcp 192.0.2.9:2379: connection refused",
		"west: connected on 2/2 agents, synced on 1",
		"services:   shop/checkout: remote backends min 2, max 3 across 2 agents",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("status lacks %q:\n%s", want, text)
		}
	}
	if st.Agents.Connected != (Spread{Min: 1, Avg: 1.5, Max: 2}) || len(st.Agents.Services) != 1 || st.Agents.Services[0].Max != 3 {
		t.Errorf("status -o json: %+v", st.Agents)
	}

	// e2 connects to north: reported within the interval.
	e2.set(agentsync.Status{Cluster: "east", Remotes: []agentsync.RemoteStatus{
		{Name: "west", Connected: true, Ready: true}, {Name: "north", Connected: true, Ready: true},
	}, Services: []agentsync.ServiceStatus{checkout(2, 1)}})
	testenv.WaitFor(t, 10*time.Second, "e2's change reported", func() bool {
		sum, err := summarizeAgents(ctx, east.Client, ns, time.Now())
		return err == nil && sum.Connected == Spread{Min: 2, Avg: 2, Max: 2} && sum.Synced.Min == 2
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
	if text, _ := status(); !strings.Contains(text, "agents:     2 reporting, 1 stale (not renewed: e3)") {
		t.Errorf("status with a stale report:\n%s", text)
	}

	// e2 exits cleanly: its report is gone.
	r2.cancel()
	if err := <-r2.done; err != nil {
		t.Fatal(err)
	}
	r2.done <- nil // for the cleanup
	if _, err := east.Client.CoordinationV1().Leases(ns).Get(ctx, agentReportName("e2"), metav1.GetOptions{}); err == nil {
		t.Error("e2's report outlived its agent")
	}
	if _, st := status(); st.Agents.Reporting != 1 {
		t.Errorf("after e2 exited: %+v", st.Agents)
	}
}

// The agent's report flags: off without the Kubernetes source or with a zero
// interval; the node's name from --node-name, else $NODE_NAME.
func TestAgentReportFlags(t *testing.T) {
	var f agentReportFlags
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	f.register(fs)
	if err := fs.Parse([]string{"--report-namespace", "mesh"}); err != nil || f.interval != defaultReportMinInterval {
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
	if n := agentReportName(strings.Repeat("n", 300)); len(n) != 253 || !strings.HasPrefix(n, agentName+"-nnn") {
		t.Errorf("long node name: %d %q", len(n), n)
	}
}
