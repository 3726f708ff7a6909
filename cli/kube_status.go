package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/agentsync"
)

// KubeStatus is a cluster's mesh apiserver as its Kubernetes objects show
// it (the agents' own view is 'clustermesh status --agent').
type KubeStatus struct {
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
	Ready  bool          `json:"ready"`
	// Waiting says why it is not ready.
	Waiting []string `json:"waiting,omitempty"`
}

// kubeStatus reads the cluster's status.
func kubeStatus(ctx context.Context, t *kubeTarget, ns string) (KubeStatus, error) {
	st := KubeStatus{Context: t.Context, Namespace: ns, Remotes: map[string]string{}}
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
	svc, err := t.Client.CoreV1().Services(ns).Get(ctx, apiserverName, metav1.GetOptions{})
	if err == nil {
		st.ServiceType = string(svc.Spec.Type)
	}
	if st.Endpoint == "" {
		st.Waiting = append(st.Waiting, m.whyNoEP)
	}
	d, err := t.Client.AppsV1().Deployments(ns).Get(ctx, apiserverName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		st.Waiting = append(st.Waiting, fmt.Sprintf("no deployment %s/%s: run clustermesh enable --context %s again", ns, apiserverName, t.Context))
	case err != nil:
		return st, fmt.Errorf("context %s: %w", t.Context, err)
	default:
		st.ReadyReplicas, st.DesiredReplicas = d.Status.ReadyReplicas, 1
		if d.Spec.Replicas != nil {
			st.DesiredReplicas = *d.Spec.Replicas
		}
		if st.ReadyReplicas < 1 {
			why := fmt.Sprintf("deployment %s/%s: %d/%d replicas ready", ns, apiserverName, st.ReadyReplicas, st.DesiredReplicas)
			for _, c := range d.Status.Conditions {
				if c.Status != "True" && c.Message != "" {
					why += "; " + c.Message
				}
			}
			st.Waiting = append(st.Waiting, why)
		}
	}
	st.Ready = len(st.Waiting) == 0
	return st, nil
}

// printKubeStatus writes st as a table or as JSON.
func printKubeStatus(w io.Writer, st KubeStatus, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	fmt.Fprintf(w, "Cluster %s (id %d), context %s, namespace %s\n", st.Cluster, st.ClusterID, st.Context, st.Namespace)
	fmt.Fprintf(w, "apiserver:  %d/%d ready, service %s, endpoint %s\n", st.ReadyReplicas, st.DesiredReplicas, orDashS(st.ServiceType), orDashS(st.Endpoint))
	fmt.Fprintf(w, "peers:      %s (may read this cluster)\n", orNone(st.Peers))
	names := slices.Sorted(maps.Keys(st.Remotes))
	if len(names) == 0 {
		fmt.Fprintln(w, "remotes:    none")
	}
	for i, n := range names {
		label := "remotes:   "
		if i > 0 {
			label = "           "
		}
		fmt.Fprintf(w, "%s %s at %s\n", label, n, st.Remotes[n])
	}
	if len(st.TrustedCAs) > 0 {
		fmt.Fprintf(w, "trusts:     the CAs of %s (left by an earlier connect --allow-mismatching-ca: run connect again to take it back)\n", strings.Join(st.TrustedCAs, ", "))
	}
	printAgents(w, st.Agents)
	if st.Ready {
		fmt.Fprintln(w, "ready")
	} else {
		fmt.Fprintf(w, "not ready: %s\n", strings.Join(st.Waiting, "; "))
	}
	return nil
}

func orDashS(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// runKubeStatus prints the status of context's cluster; with wait, it polls
// until the cluster is ready or timeout passes, saying on progress what it
// still waits for.
func runKubeStatus(ctx context.Context, kf *kubeFlags, kubeContext, ns string, wait bool, timeout time.Duration, asJSON bool, out, progress io.Writer) error {
	t, err := kf.target(kubeContext)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		st, err := kubeStatus(ctx, t, ns)
		if err != nil {
			return err
		}
		if st.Ready || !wait {
			return printKubeStatus(out, st, asJSON)
		}
		if why := strings.Join(st.Waiting, "; "); why != last {
			fmt.Fprintf(progress, "waiting: %s\n", why)
			last = why
		}
		select {
		case <-ctx.Done():
			if err := printKubeStatus(out, st, asJSON); err != nil {
				return err
			}
			return fmt.Errorf("cluster %s not ready after %s: %s", st.Cluster, timeout, strings.Join(st.Waiting, "; "))
		case <-time.After(time.Second):
		}
	}
}

// printAgents writes what the agents report.
func printAgents(w io.Writer, a AgentsSummary) {
	if a.Error != "" {
		fmt.Fprintf(w, "agents:     unknown: %s\n", a.Error)
		return
	}
	stale := ""
	if len(a.Stale) > 0 {
		stale = fmt.Sprintf(", %d stale (not renewed: %s)", len(a.Stale), strings.Join(a.Stale, ", "))
	}
	if a.Reporting == 0 {
		fmt.Fprintf(w, "agents:     none reporting%s (agents run with --state-source kubernetes report here)\n", stale)
		return
	}
	f := func(s Spread) string { return fmt.Sprintf("%d/%.1f/%d", s.Min, s.Avg, s.Max) }
	fmt.Fprintf(w, "agents:     %d reporting%s\n", a.Reporting, stale)
	fmt.Fprintf(w, "            remotes per agent (min/avg/max): configured %s, connected %s, synced %s\n",
		f(a.Configured), f(a.Connected), f(a.Synced))
	for _, r := range a.PerRemote {
		fmt.Fprintf(w, "            %s: connected on %d/%d agents, synced on %d", r.Name, r.Connected, a.Reporting, r.Synced)
		if r.LastError != "" {
			fmt.Fprintf(w, "; last error on %s: %s", r.ErrorNode, r.LastError)
		}
		fmt.Fprintln(w)
	}
	for i, s := range a.Services {
		label := "services:  "
		if i > 0 {
			label = "           "
		}
		fmt.Fprintf(w, "%s %s/%s: remote backends min %d, max %d across %d agents\n", label, s.Namespace, s.Name, s.Min, s.Max, s.Agents)
	}
}
