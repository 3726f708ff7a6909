package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1ac "k8s.io/client-go/applyconfigurations/coordination/v1"
	"k8s.io/client-go/kubernetes"
)

// An agent running with --state-source=kubernetes reports a compact status
// to its cluster, for 'clustermesh status --context': one Lease per node,
// clustermesh-agent-<node> in the clustermesh namespace, labelled
// agentReportSelector, whose renewTime says when it was written and
// leaseDurationSeconds after how long a report that was not renewed is
// stale, with the report as JSON in the annotation agentReportAnnotation.
// A Lease, not a ConfigMap: the agents' role then needs no write access to
// the namespace's ConfigMaps, which hold the apiserver's configuration,
// identities and trusted CAs.
const (
	agentReportAnnotation = "clustermesh.io/agent-status"
	agentReportComponent  = "agent-status"
	agentReportSelector   = "app.kubernetes.io/part-of=clustermesh,app.kubernetes.io/component=" + agentReportComponent
	agentReportManager    = "clustermesh-agent"

	// Defaults of agentReporter: a change is written at most every
	// MinInterval, an unchanged report every Refresh, and a report not
	// renewed for StaleAfter is stale.
	defaultReportMinInterval = 5 * time.Second
	defaultReportRefresh     = 30 * time.Second
	defaultReportStaleAfter  = 90 * time.Second
	// maxReportBytes bounds the annotation (Kubernetes allows 256 KiB for
	// all of an object's annotations): services beyond it are left out.
	maxReportBytes = 200 << 10
	maxErrorLen    = 300
)

// AgentReport is what an agent reports of itself to its cluster.
type AgentReport struct {
	Node    string              `json:"node"`
	Cluster string              `json:"cluster"`
	Remotes []AgentReportRemote `json:"remotes"`
	// Services are the local global services with their remote backends.
	Services []AgentReportService `json:"services,omitempty"`
	// ServicesLeftOut counts services beyond the report's size bound.
	ServicesLeftOut int `json:"servicesLeftOut,omitempty"`
}

// AgentReportRemote is one remote cluster as an agent sees it.
type AgentReportRemote struct {
	Name      string `json:"name"`
	Connected bool   `json:"connected"`
	Synced    bool   `json:"synced"` // every kind listed since the last connect
	Stale     bool   `json:"stale,omitempty"`
	LastError string `json:"lastError,omitempty"`
}

// AgentReportService is a global service's remote backends per cluster.
type AgentReportService struct {
	Namespace string         `json:"namespace"`
	Name      string         `json:"name"`
	Remote    map[string]int `json:"remote,omitempty"`
}

// newAgentReport condenses an agent's status.
func newAgentReport(node string, st AgentStatus) AgentReport {
	r := AgentReport{Node: node, Cluster: st.Cluster, Remotes: []AgentReportRemote{}}
	for _, rs := range st.Remotes {
		e := rs.LastError
		if len(e) > maxErrorLen {
			e = e[:maxErrorLen] + "…"
		}
		if rs.Connected {
			e = "" // the last error is history once connected
		}
		r.Remotes = append(r.Remotes, AgentReportRemote{Name: rs.Name, Connected: rs.Connected, Synced: rs.Ready, Stale: rs.Stale, LastError: e})
	}
	slices.SortFunc(r.Remotes, func(a, b AgentReportRemote) int { return strings.Compare(a.Name, b.Name) })
	for _, s := range st.Services {
		r.Services = append(r.Services, AgentReportService{Namespace: s.Namespace, Name: s.Name, Remote: s.Remote})
	}
	slices.SortFunc(r.Services, func(a, b AgentReportService) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return r
}

// encode returns the report as JSON within maxReportBytes, leaving out
// services from the end when needed.
func (r AgentReport) encode() ([]byte, error) {
	for {
		b, err := json.Marshal(r)
		if err != nil || len(b) <= maxReportBytes || len(r.Services) == 0 {
			return b, err
		}
		drop := max(1, len(r.Services)/4)
		r.Services = r.Services[:len(r.Services)-drop]
		r.ServicesLeftOut += drop
	}
}

// agentReportName is node's Lease: clustermesh-agent-<node>, with a hash
// in place of the end of a name too long for an object name.
func agentReportName(node string) string {
	name := agentName + "-" + node
	if len(name) <= 253 {
		return name
	}
	h := sha256.Sum256([]byte(node))
	return name[:253-17] + "-" + hex.EncodeToString(h[:])[:16]
}

// agentReporter writes an agent's report to its Lease: at once, then when
// the report changes (at most every MinInterval) and every Refresh; it
// deletes the Lease when its context ends. Write failures are logged, not
// returned: the agent keeps running without its report.
type agentReporter struct {
	Client      kubernetes.Interface
	Namespace   string
	Node        string
	Status      func() AgentStatus
	MinInterval time.Duration // default defaultReportMinInterval
	Refresh     time.Duration // default defaultReportRefresh
	StaleAfter  time.Duration // default defaultReportStaleAfter
	Logger      *slog.Logger
}

// kubeAgentReporter returns the reporter of an agent on node as a server
// for runAll, with the default intervals.
func kubeAgentReporter(client kubernetes.Interface, namespace, node string, status func() AgentStatus) func(context.Context) error {
	r := &agentReporter{Client: client, Namespace: namespace, Node: node, Status: status}
	return r.Run
}

// Run reports until ctx ends, then deletes the report.
func (r *agentReporter) Run(ctx context.Context) error {
	minInterval := orDefault(r.MinInterval, defaultReportMinInterval)
	refresh := orDefault(r.Refresh, defaultReportRefresh)
	log := r.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("lease", r.Namespace+"/"+agentReportName(r.Node))
	var last []byte
	var lastWrite time.Time
	var lastErr string
	// Poll the status at a fraction of the minimum interval, so that a
	// change is written soon after the interval allows it.
	tick := time.NewTicker(min(minInterval/5+time.Millisecond, time.Second))
	defer tick.Stop()
	defer r.remove(ctx, log)
	for {
		b, err := newAgentReport(r.Node, r.Status()).encode()
		if err != nil {
			return fmt.Errorf("agent report: %w", err)
		}
		now := time.Now()
		due := lastWrite.IsZero() || now.Sub(lastWrite) >= refresh || (string(b) != string(last) && now.Sub(lastWrite) >= minInterval)
		if due {
			err := r.write(ctx, b, now)
			switch {
			case err == nil:
				last, lastWrite, lastErr = b, now, ""
			case ctx.Err() != nil:
				return nil
			case err.Error() != lastErr:
				// Log each new failure once; retry at the next tick.
				lastErr = err.Error()
				log.Warn("agent status report not written", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func (r *agentReporter) write(ctx context.Context, report []byte, now time.Time) error {
	stale := int32(orDefault(r.StaleAfter, defaultReportStaleAfter) / time.Second)
	name := agentReportName(r.Node)
	lease := coordinationv1ac.Lease(name, r.Namespace).
		WithLabels(map[string]string{"app.kubernetes.io/part-of": "clustermesh", "app.kubernetes.io/component": agentReportComponent}).
		WithAnnotations(map[string]string{agentReportAnnotation: string(report)}).
		WithSpec(coordinationv1ac.LeaseSpec().WithHolderIdentity(r.Node).WithLeaseDurationSeconds(stale).
			WithRenewTime(metav1.NewMicroTime(now)))
	_, err := r.Client.CoordinationV1().Leases(r.Namespace).Apply(ctx, lease, metav1.ApplyOptions{FieldManager: agentReportManager, Force: true})
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("lease %s/%s: %w: the agent's service account may not write its status report; apply the role of 'clustermesh manifests' (create, patch, delete on leases in %s)", r.Namespace, name, err, r.Namespace)
	}
	if err != nil {
		return fmt.Errorf("lease %s/%s: %w", r.Namespace, name, err)
	}
	return nil
}

// remove deletes the report on the way out: a clean exit leaves no report
// that would turn stale.
func (r *agentReporter) remove(ctx context.Context, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	name := agentReportName(r.Node)
	if err := r.Client.CoordinationV1().Leases(r.Namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		log.Warn("agent status report not deleted", "err", err)
	}
}

// agentReportFlags are the agent's flags of its status report.
type agentReportFlags struct {
	namespace string
	interval  time.Duration
}

func (f *agentReportFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.namespace, "report-namespace", "", "with --state-source=kubernetes: namespace of the status report (lease clustermesh-agent-<node>) that 'clustermesh status --context' reads (default: the pod's, else "+defaultKubeNamespace+")")
	fs.DurationVar(&f.interval, "report-interval", defaultReportMinInterval, "with --state-source=kubernetes: shortest time between two writes of the status report (it is also renewed every 30s; 0 disables the report)")
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
			return nil, fmt.Errorf("agent report: no node name: pass --node-name (%w)", err)
		}
		node = h
	}
	client, err := newKubeClient(kubeconfig, kubeContext)
	if err != nil {
		return nil, fmt.Errorf("agent report: %w", err)
	}
	r := &agentReporter{Client: client, Namespace: kubeNamespace(f.namespace), Node: node, Status: status, MinInterval: f.interval}
	return r.Run, nil
}

// AgentsSummary is what the agents of a cluster report, across nodes.
type AgentsSummary struct {
	// Reporting counts the fresh reports; Stale names the nodes whose
	// report was not renewed in time (left out of everything below).
	Reporting int      `json:"reporting"`
	Stale     []string `json:"stale,omitempty"`
	// Remotes configured, connected and synced per agent.
	Configured Spread `json:"configured"`
	Connected  Spread `json:"connected"`
	Synced     Spread `json:"synced"`
	// PerRemote: each remote cluster, on how many agents it is connected,
	// and a last error one of them reported.
	PerRemote []RemoteAgents `json:"perRemote,omitempty"`
	// Services: each global service's remote backends across agents.
	Services []ServiceBackends `json:"services,omitempty"`
	// Error: the reports could not be read (for example, no right to list
	// leases in the namespace).
	Error string `json:"error,omitempty"`
}

// Spread is a count's minimum, average and maximum across agents.
type Spread struct {
	Min int     `json:"min"`
	Avg float64 `json:"avg"`
	Max int     `json:"max"`
}

// RemoteAgents is one remote cluster across the agents.
type RemoteAgents struct {
	Name       string `json:"name"`
	Configured int    `json:"configured"` // agents with its config
	Connected  int    `json:"connected"`
	Synced     int    `json:"synced"`
	LastError  string `json:"lastError,omitempty"` // of the first agent (by node) not connected
	ErrorNode  string `json:"errorNode,omitempty"`
}

// ServiceBackends is a global service's remote backend count (summed over
// remote clusters) across agents.
type ServiceBackends struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Min       int    `json:"min"`
	Max       int    `json:"max"`
	Agents    int    `json:"agents"` // reporting the service
}

// summarizeAgents reads the agents' reports (Leases) of namespace.
func summarizeAgents(ctx context.Context, client kubernetes.Interface, namespace string, now time.Time) (AgentsSummary, error) {
	var sum AgentsSummary
	l, err := client.CoordinationV1().Leases(namespace).List(ctx, metav1.ListOptions{LabelSelector: agentReportSelector})
	if err != nil {
		return sum, fmt.Errorf("agents' status reports (leases in %s): %w", namespace, err)
	}
	var reports []AgentReport
	for _, lease := range l.Items {
		var r AgentReport
		if err := json.Unmarshal([]byte(lease.Annotations[agentReportAnnotation]), &r); err != nil {
			continue
		}
		s := lease.Spec
		if s.RenewTime == nil || s.LeaseDurationSeconds == nil || now.Sub(s.RenewTime.Time) > time.Duration(*s.LeaseDurationSeconds)*time.Second {
			sum.Stale = append(sum.Stale, r.Node)
			continue
		}
		reports = append(reports, r)
	}
	slices.Sort(sum.Stale)
	slices.SortFunc(reports, func(a, b AgentReport) int { return strings.Compare(a.Node, b.Node) })
	sum.Reporting = len(reports)
	var configured, connected, synced []int
	remotes := map[string]*RemoteAgents{}
	services := map[string]*ServiceBackends{}
	for _, r := range reports {
		var c, s int
		for _, rm := range r.Remotes {
			ra := remotes[rm.Name]
			if ra == nil {
				ra = &RemoteAgents{Name: rm.Name}
				remotes[rm.Name] = ra
			}
			ra.Configured++
			if rm.Connected {
				c++
				ra.Connected++
			} else if ra.LastError == "" && rm.LastError != "" {
				ra.LastError, ra.ErrorNode = rm.LastError, r.Node
			}
			if rm.Synced {
				s++
				ra.Synced++
			}
		}
		configured, connected, synced = append(configured, len(r.Remotes)), append(connected, c), append(synced, s)
		for _, svc := range r.Services {
			n := 0
			for _, b := range svc.Remote {
				n += b
			}
			key := svc.Namespace + "/" + svc.Name
			sb := services[key]
			if sb == nil {
				sb = &ServiceBackends{Namespace: svc.Namespace, Name: svc.Name, Min: n, Max: n}
				services[key] = sb
			}
			sb.Min, sb.Max, sb.Agents = min(sb.Min, n), max(sb.Max, n), sb.Agents+1
		}
	}
	sum.Configured, sum.Connected, sum.Synced = spread(configured), spread(connected), spread(synced)
	for _, name := range slices.Sorted(maps.Keys(remotes)) {
		sum.PerRemote = append(sum.PerRemote, *remotes[name])
	}
	for _, key := range slices.Sorted(maps.Keys(services)) {
		sum.Services = append(sum.Services, *services[key])
	}
	return sum, nil
}

func spread(xs []int) Spread {
	if len(xs) == 0 {
		return Spread{}
	}
	s := Spread{Min: slices.Min(xs), Max: slices.Max(xs)}
	total := 0
	for _, x := range xs {
		total += x
	}
	s.Avg = float64(total) / float64(len(xs))
	return s
}
