package kubemesh

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1ac "k8s.io/client-go/applyconfigurations/coordination/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/clustermesh/clustermesh/agentsync"
)

// An agent that reads its cluster from Kubernetes reports a compact status
// to it, for ReadStatus: one Lease per node, clustermesh-agent-<node> in the
// clustermesh namespace, labelled agentReportSelector, whose renewTime says
// when it was written and leaseDurationSeconds after how long a report that
// was not renewed is stale, with the report as JSON in the annotation
// agentReportAnnotation. A Lease, not a ConfigMap: the agents' role then
// needs no write access to the namespace's ConfigMaps, which hold the
// apiserver's configuration, identities and trusted CAs.
const (
	agentReportAnnotation = "clustermesh.io/agent-status"
	agentReportComponent  = "agent-status"
	agentReportSelector   = "app.kubernetes.io/part-of=clustermesh,app.kubernetes.io/component=" + agentReportComponent
	agentReportManager    = "clustermesh-agent"

	// DefaultReportMinInterval is the shortest time between two writes of
	// a changed report (AgentReporterConfig.MinInterval).
	DefaultReportMinInterval = 5 * time.Second
	// An unchanged report is written every defaultReportRefresh; one not
	// renewed for defaultReportStaleAfter is stale.
	defaultReportRefresh    = 30 * time.Second
	defaultReportStaleAfter = 90 * time.Second
	// maxReportBytes bounds the annotation (Kubernetes allows 256 KiB for
	// all of an object's annotations): services beyond it are left out.
	maxReportBytes = 200 << 10
	maxErrorLen    = 300
)

// agentReport is what an agent reports of itself to its cluster.
type agentReport struct {
	Node    string              `json:"node"`
	Cluster string              `json:"cluster"`
	Remotes []agentReportRemote `json:"remotes"`
	// Services are the local global services with their remote backends.
	Services []agentReportService `json:"services,omitempty"`
	// ServicesLeftOut counts services beyond the report's size bound.
	ServicesLeftOut int `json:"servicesLeftOut,omitempty"`
}

// agentReportRemote is one remote cluster as an agent sees it.
type agentReportRemote struct {
	Name      string `json:"name"`
	Connected bool   `json:"connected"`
	Synced    bool   `json:"synced"` // every kind listed since the last connect
	Stale     bool   `json:"stale,omitempty"`
	LastError string `json:"lastError,omitempty"`
}

// agentReportService is a global service's remote backends per cluster.
type agentReportService struct {
	Namespace string         `json:"namespace"`
	Name      string         `json:"name"`
	Remote    map[string]int `json:"remote,omitempty"`
}

// newAgentReport condenses an agent's status.
func newAgentReport(node string, st agentsync.Status) agentReport {
	r := agentReport{Node: node, Cluster: st.Cluster, Remotes: []agentReportRemote{}}
	for _, rs := range st.Remotes {
		e := rs.LastError
		if len(e) > maxErrorLen {
			e = e[:maxErrorLen] + "…"
		}
		if rs.Connected {
			e = "" // the last error is history once connected
		}
		r.Remotes = append(r.Remotes, agentReportRemote{Name: rs.Name, Connected: rs.Connected, Synced: rs.Ready, Stale: rs.Stale, LastError: e})
	}
	slices.SortFunc(r.Remotes, func(a, b agentReportRemote) int { return strings.Compare(a.Name, b.Name) })
	for _, s := range st.Services {
		r.Services = append(r.Services, agentReportService{Namespace: s.Namespace, Name: s.Name, Remote: s.Remote})
	}
	slices.SortFunc(r.Services, func(a, b agentReportService) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return r
}

// encode returns the report as JSON within maxReportBytes, leaving out
// services from the end when needed.
func (r agentReport) encode() ([]byte, error) {
	for {
		b, err := json.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("encoding the agent report: %w", err)
		}
		if len(b) <= maxReportBytes || len(r.Services) == 0 {
			return b, nil
		}
		drop := max(1, len(r.Services)/4)
		r.Services = r.Services[:len(r.Services)-drop]
		r.ServicesLeftOut += drop
	}
}

// agentReportName is node's Lease: clustermesh-agent-<node>, with a hash
// in place of the end of a name too long for an object name.
func agentReportName(node string) string {
	name := AgentName + "-" + node
	if len(name) <= 253 {
		return name
	}
	h := sha256.Sum256([]byte(node))
	return name[:253-17] + "-" + hex.EncodeToString(h[:])[:16]
}

// AgentReporterConfig configures an AgentReporter.
type AgentReporterConfig struct {
	Client    kubernetes.Interface // of the agent's cluster, with the role AgentManifests gives the agent
	Namespace string               // of the report (default DefaultNamespace)
	Node      string               // the agent's node
	// Status is the agent's status, read at every tick.
	Status func() agentsync.Status
	// A changed report is written at most every MinInterval (default
	// DefaultReportMinInterval), an unchanged one every Refresh (default
	// 30s); a report not renewed for StaleAfter (default 90s) is stale.
	MinInterval, Refresh, StaleAfter time.Duration
	Logger                           *slog.Logger // default slog.Default()
}

// AgentReporter writes an agent's report to its Lease: at once, then when
// the report changes (at most every MinInterval) and every Refresh; it
// deletes the Lease when its context ends. Write failures are logged, not
// returned: the agent keeps running without its report.
type AgentReporter struct {
	cfg AgentReporterConfig
	log *slog.Logger
}

// NewAgentReporter checks cfg and fills in its defaults.
func NewAgentReporter(cfg AgentReporterConfig) (*AgentReporter, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("the agent reporter needs a Kubernetes client")
	case cfg.Node == "":
		return nil, errors.New("the agent reporter needs the node's name")
	case cfg.Status == nil:
		return nil, errors.New("the agent reporter needs the agent's status")
	}
	cfg.Namespace = orDefault(cfg.Namespace, DefaultNamespace)
	cfg.MinInterval = positiveOr(cfg.MinInterval, DefaultReportMinInterval)
	cfg.Refresh = positiveOr(cfg.Refresh, defaultReportRefresh)
	cfg.StaleAfter = positiveOr(cfg.StaleAfter, defaultReportStaleAfter)
	log := orDefault(cfg.Logger, slog.Default())
	return &AgentReporter{cfg: cfg, log: log.With("lease", cfg.Namespace+"/"+agentReportName(cfg.Node))}, nil
}

func positiveOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Run reports until ctx ends, then deletes the report.
func (r *AgentReporter) Run(ctx context.Context) error {
	var last []byte
	var lastWrite time.Time
	var lastErr string
	// Poll the status at a fraction of the minimum interval, so that a
	// change is written soon after the interval allows it.
	tick := time.NewTicker(min(r.cfg.MinInterval/5+time.Millisecond, time.Second))
	defer tick.Stop()
	defer r.remove(ctx)
	for {
		b, err := newAgentReport(r.cfg.Node, r.cfg.Status()).encode()
		if err != nil {
			return err
		}
		now := time.Now()
		due := lastWrite.IsZero() || now.Sub(lastWrite) >= r.cfg.Refresh || (string(b) != string(last) && now.Sub(lastWrite) >= r.cfg.MinInterval)
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
				r.log.Warn("agent status report not written", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (r *AgentReporter) write(ctx context.Context, report []byte, now time.Time) error {
	ns, name := r.cfg.Namespace, agentReportName(r.cfg.Node)
	lease := coordinationv1ac.Lease(name, ns).
		WithLabels(map[string]string{"app.kubernetes.io/part-of": "clustermesh", "app.kubernetes.io/component": agentReportComponent}).
		WithAnnotations(map[string]string{agentReportAnnotation: string(report)}).
		WithSpec(coordinationv1ac.LeaseSpec().WithHolderIdentity(r.cfg.Node).WithLeaseDurationSeconds(int32(r.cfg.StaleAfter / time.Second)).
			WithRenewTime(metav1.NewMicroTime(now)))
	_, err := r.cfg.Client.CoordinationV1().Leases(ns).Apply(ctx, lease, metav1.ApplyOptions{FieldManager: agentReportManager, Force: true})
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("applying lease %s/%s: %w: the agent's service account may not write its status report; apply the role of 'clustermesh manifests' (create, patch, delete on leases in %s)", ns, name, err, ns)
	}
	if err != nil {
		return fmt.Errorf("applying lease %s/%s: %w", ns, name, err)
	}
	return nil
}

// remove deletes the report on the way out: a clean exit leaves no report
// that would turn stale.
func (r *AgentReporter) remove(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	name := agentReportName(r.cfg.Node)
	if err := r.cfg.Client.CoordinationV1().Leases(r.cfg.Namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		r.log.Warn("agent status report not deleted", "err", err)
	}
}
