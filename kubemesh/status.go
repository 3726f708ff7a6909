package kubemesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/agentsync"
)

// StatusOptions say which cluster ReadStatus reads, and whether it waits.
type StatusOptions struct {
	Kubeconfig string
	Context    string // the cluster's kubeconfig context ("": the current one)
	Namespace  string // clustermesh runs in (default DefaultNamespace)
	// Wait reads again, every second, until the cluster is ready or Timeout
	// has passed; OnWaiting, when set, is told what it still waits for
	// whenever that changes.
	Wait      bool
	OnWaiting func(why string)
	// Timeout bounds the whole call (0: only ctx does).
	Timeout time.Duration
}

// Status is a cluster's mesh apiserver as its Kubernetes objects show it
// (the agents' own view is 'clustermesh status --agent'), and what its
// agents report.
type Status struct {
	Context   string `json:"context"`
	Namespace string `json:"namespace"`
	Cluster   string `json:"cluster"`
	ClusterID uint32 `json:"clusterID"`
	// Deployment: ready and wanted replicas of the apiserver.
	ReadyReplicas   int32  `json:"readyReplicas"`
	DesiredReplicas int32  `json:"desiredReplicas"`
	ServiceType     string `json:"serviceType"`
	Endpoint        string `json:"endpoint,omitempty"` // what peers dial
	// Peers may read this cluster; Remotes are the clusters its agents read.
	Peers   []string          `json:"peers"`
	Remotes map[string]string `json:"remotes"` // name → endpoint
	// TrustedCAs are clusters of another CA whose client certificates the
	// apiserver still accepts, as an earlier version of connect
	// --allow-mismatching-ca granted; connect or disconnect takes it back.
	TrustedCAs []string `json:"trustedCAs,omitempty"`
	// Agents is what the agents report (those run with
	// --state-source=kubernetes), across nodes.
	Agents AgentsSummary `json:"agents"`
	// Slices are the EndpointSlices of remote backends 'clustermesh slices'
	// wrote, per service; Imports the ServiceImports (the MCS API) with
	// those of their derived Services; ExportConflicts the local exports in
	// conflict. SlicesError says why they could not be read.
	Slices          []ServiceSlices  `json:"slices,omitempty"`
	Imports         []ImportSummary  `json:"imports,omitempty"`
	ExportConflicts []ExportConflict `json:"exportConflicts,omitempty"`
	SlicesError     string           `json:"slicesError,omitempty"`
	Ready           bool             `json:"ready"`
	// Waiting says why it is not ready.
	Waiting []string `json:"waiting,omitempty"`
}

// ErrNotReady is the error of ReadStatus with Wait when the cluster did not
// get ready in time.
var ErrNotReady = errors.New("not ready")

// ReadStatus reads the status of a cluster's mesh. With Wait, it returns
// once the cluster is ready, or with the last status read and an error
// that wraps ErrNotReady and says what it still waits for, when Timeout
// passes first.
func ReadStatus(ctx context.Context, o StatusOptions) (Status, error) {
	ns := orDefault(o.Namespace, DefaultNamespace)
	t, err := Open(o.Kubeconfig, o.Context)
	if err != nil {
		return Status{}, err
	}
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last := ""
	for {
		st, err := readStatus(ctx, t, ns)
		if err != nil || st.Ready || !o.Wait {
			return st, err
		}
		if why := strings.Join(st.Waiting, "; "); why != last && o.OnWaiting != nil {
			o.OnWaiting(why)
			last = why
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("cluster %s %w after %s: %s", st.Cluster, ErrNotReady, o.Timeout, strings.Join(st.Waiting, "; "))
		case <-tick.C:
		}
	}
}

// readStatus reads the cluster's status once.
func readStatus(ctx context.Context, t *Target, ns string) (Status, error) {
	st := Status{Context: t.Context, Namespace: ns, Remotes: map[string]string{}}
	m, err := loadMember(ctx, t, ns, "")
	if err != nil {
		return st, err
	}
	st.Cluster, st.ClusterID, st.Peers, st.Endpoint = m.name, m.id, m.peers, m.endpoint
	for name, cfg := range m.remotes {
		if strings.HasPrefix(name, ".") {
			continue
		}
		var rc agentsync.RemoteConfig
		if err := yaml.Unmarshal(cfg, &rc); err == nil && len(rc.Endpoints) > 0 {
			st.Remotes[name] = strings.Join(rc.Endpoints, ",")
		} else {
			st.Remotes[name] = "(invalid config)"
		}
	}
	for k := range m.trustedCAs {
		st.TrustedCAs = append(st.TrustedCAs, strings.TrimSuffix(k, ".crt"))
	}
	slices.Sort(st.TrustedCAs)
	if st.Agents, err = summarizeAgents(ctx, t.Client, ns, time.Now()); err != nil {
		// The rest of the status stands without them.
		st.Agents.Error = err.Error()
	}
	if err := st.readSlicesAndImports(ctx, t); err != nil {
		st.SlicesError = err.Error() // the rest of the status stands without them
	}
	if svc, err := t.Client.CoreV1().Services(ns).Get(ctx, APIServerName, metav1.GetOptions{}); err == nil {
		st.ServiceType = string(svc.Spec.Type)
	}
	if st.Endpoint == "" {
		st.Waiting = append(st.Waiting, m.whyNoEP)
	}
	if err := st.readDeployment(ctx, t); err != nil {
		return st, err
	}
	st.Ready = len(st.Waiting) == 0
	return st, nil
}

// readDeployment reads the apiserver's replicas, and why they are not
// ready.
func (st *Status) readDeployment(ctx context.Context, t *Target) error {
	ns := st.Namespace
	d, err := t.Client.AppsV1().Deployments(ns).Get(ctx, APIServerName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		st.Waiting = append(st.Waiting, fmt.Sprintf("no deployment %s/%s: run clustermesh enable --context %s again", ns, APIServerName, t.Context))
		return nil
	case err != nil:
		return fmt.Errorf("context %s: reading deployment %s/%s: %w", t.Context, ns, APIServerName, err)
	}
	st.ReadyReplicas, st.DesiredReplicas = d.Status.ReadyReplicas, 1
	if d.Spec.Replicas != nil {
		st.DesiredReplicas = *d.Spec.Replicas
	}
	if st.ReadyReplicas < 1 {
		why := fmt.Sprintf("deployment %s/%s: %d/%d replicas ready", ns, APIServerName, st.ReadyReplicas, st.DesiredReplicas)
		for _, c := range d.Status.Conditions {
			if c.Status != "True" && c.Message != "" {
				why += "; " + c.Message
			}
		}
		st.Waiting = append(st.Waiting, why)
	}
	return nil
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
		return sum, fmt.Errorf("listing the agents' status reports (leases in %s): %w", namespace, err)
	}
	var reports []agentReport
	for _, lease := range l.Items {
		var r agentReport
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
	slices.SortFunc(reports, func(a, b agentReport) int { return strings.Compare(a.Node, b.Node) })
	sum.add(reports)
	return sum, nil
}

// add sums up fresh reports, sorted by node.
func (sum *AgentsSummary) add(reports []agentReport) {
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
