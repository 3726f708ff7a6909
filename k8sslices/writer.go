// Package k8sslices owns the EndpointSlices of remote backends: for each
// local global service that asks for them (the annotation
// service.cilium.io/global-sync-endpoint-slices: "true", or every global
// service with Config.AllGlobal), one EndpointSlice per remote cluster (per
// address family and port set, at most MaxEndpointsPerSlice endpoints each)
// listing the backends that cluster offers, so that whatever reads
// EndpointSlices in the cluster (CoreDNS for headless services, ingress
// controllers, meshes, kubectl) sees them.
//
// The backends come from a Source (the agent's merge, which admits only the
// addresses a remote owns); a change is signalled with Notify and a burst of
// them is coalesced into one pass. A pass computes every wanted slice and
// writes only the difference with what the API server holds: creates,
// updates (optimistic, on the resourceVersion read) and deletes of slices
// that are no longer wanted (a remote gone, a backend gone, the annotation
// removed). The writer reads and writes only slices labelled
// endpointslice.kubernetes.io/managed-by: slices.clustermesh.io; a slice of
// the same name without that label is a conflict, counted and left alone.
//
// One writer per cluster writes: Run campaigns for a Lease (client-go's
// leader election) and writes only while it holds it. Slice names are
// derived from the service, the cluster and the slice's content key, so two
// writers that overlap during a hand-over still converge on the same slices.
package k8sslices

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/clustermesh/clustermesh/internal/coalesce"
	"github.com/clustermesh/clustermesh/internal/loglimit"
	"github.com/clustermesh/clustermesh/merge"
)

// Defaults of Config.
const (
	DefaultLeaseName     = "clustermesh-slices"
	DefaultCoalesce      = 50 * time.Millisecond
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
	// retryAfterError is how long a pass that failed waits to run again.
	retryAfterError = time.Second
)

// ErrInvalidConfig is wrapped by every error of New about its Config.
var ErrInvalidConfig = errors.New("invalid endpoint slice writer config")

// Source gives the remote backends of a service; *agentsync.Agent is one.
type Source interface {
	RemoteBackends(n merge.ServiceName) []merge.RemoteBackends
}

// Config of a Writer. Zero durations take the defaults.
type Config struct {
	Client kubernetes.Interface
	Source Source
	// AllGlobal writes slices for every global service, not only those
	// annotated service.cilium.io/global-sync-endpoint-slices: "true" (one
	// annotated "false" still has none).
	AllGlobal bool
	// LeaseNamespace and LeaseName name the Lease the writers of a cluster
	// share; Identity is this writer's (default: host name and pid).
	LeaseNamespace, LeaseName, Identity       string
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Coalesce is the window that gathers a burst of changes into one pass.
	Coalesce             time.Duration
	MaxEndpointsPerSlice int
	Logger               *slog.Logger
}

func (c *Config) withDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.LeaseDuration, DefaultLeaseDuration)
	def(&c.RenewDeadline, DefaultRenewDeadline)
	def(&c.RetryPeriod, DefaultRetryPeriod)
	def(&c.Coalesce, DefaultCoalesce)
	if c.LeaseName == "" {
		c.LeaseName = DefaultLeaseName
	}
	if c.LeaseNamespace == "" {
		c.LeaseNamespace = "kube-system"
	}
	if c.Identity == "" {
		host, _ := os.Hostname()
		c.Identity = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if c.MaxEndpointsPerSlice <= 0 {
		c.MaxEndpointsPerSlice = DefaultMaxEndpointsPerSlice
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Writer keeps the EndpointSlices of remote backends. Create with New, run
// with Run (once); Notify and Status may be called at any time.
type Writer struct {
	cfg     Config
	log     *slog.Logger
	dirty   chan struct{}
	metrics *metrics

	// Read and written by the pass alone (one goroutine at a time).
	written     map[string]*discoveryv1.EndpointSlice // namespace/name → what this writer last wrote
	deleted     map[string]types.UID                  // namespace/name deleted, until the cache drops it
	conflictLog *loglimit.Keyed

	elector atomic.Pointer[leaderelection.LeaderElector] // the current campaign's, for Status

	mu     sync.Mutex
	status Status // guarded by mu
	// gone holds the slices the watch saw deleted (namespace/name → their
	// last resourceVersion), until the next pass forgets what it wrote of
	// them: a slice deleted by someone else is then created again.
	gone map[string]string // guarded by mu
}

// New checks cfg and returns a writer that is not yet running.
func New(cfg Config) (*Writer, error) {
	cfg.withDefaults()
	switch {
	case cfg.Client == nil:
		return nil, fmt.Errorf("%w: no Kubernetes client", ErrInvalidConfig)
	case cfg.Source == nil:
		return nil, fmt.Errorf("%w: no source of remote backends", ErrInvalidConfig)
	}
	w := &Writer{cfg: cfg, log: cfg.Logger, dirty: make(chan struct{}, 1), metrics: newMetrics(),
		written: map[string]*discoveryv1.EndpointSlice{}, deleted: map[string]types.UID{},
		conflictLog: loglimit.New(time.Minute), gone: map[string]string{}}
	w.status.Identity = cfg.Identity
	return w, nil
}

// Notify says that the remote backends of a service may have changed. It
// never blocks: merge.Config.OnServiceChange may call it under its lock.
func (w *Writer) Notify(merge.ServiceName) { w.poke() }

func (w *Writer) poke() {
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

// Run watches the cluster's services and the writer's slices, campaigns
// for the Lease and, while it holds it, keeps the slices, until ctx ends.
// It returns nil when ctx ends, an error only when it cannot start.
func (w *Writer) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := w.startInformers(ctx)
	if err != nil {
		return err
	}
	defer st.factory.Shutdown() // after cancel: defers run in reverse
	defer cancel()

	lead := make(chan context.Context)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.campaign(ctx, lead)
	}()
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case lctx := <-lead:
			w.lead(lctx, st)
		}
	}
}

// campaign runs leader elections until ctx ends, handing each term's
// context to Run's goroutine.
func (w *Writer) campaign(ctx context.Context, lead chan<- context.Context) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: w.cfg.LeaseNamespace, Name: w.cfg.LeaseName},
		Client:     w.cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: w.cfg.Identity},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, LeaseDuration: w.cfg.LeaseDuration, RenewDeadline: w.cfg.RenewDeadline,
			RetryPeriod: w.cfg.RetryPeriod, ReleaseOnCancel: true, Name: w.cfg.LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					select {
					case lead <- lctx:
					case <-lctx.Done():
					}
				},
				OnStoppedLeading: func() {},
			},
		})
		if err != nil {
			w.log.Error("starting the endpoint slice writer's leader election", "error", err)
			return
		}
		w.elector.Store(le)
		le.Run(ctx)
	}
}

// lead keeps the slices while lctx lasts (this writer holds the Lease).
func (w *Writer) lead(lctx context.Context, st *informerSet) {
	w.setLeader(true)
	defer w.setLeader(false)
	w.log.Info("holding the endpoint slice writers' lease: writing slices", "identity", w.cfg.Identity)
	w.poke()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-lctx.Done():
			w.log.Info("no longer holding the endpoint slice writers' lease", "identity", w.cfg.Identity)
			return
		case <-retry.C:
		case <-w.dirty:
			if !coalesce.Settle(lctx, w.cfg.Coalesce, w.dirty) {
				return
			}
		}
		if !w.pass(lctx, st) && lctx.Err() == nil {
			retry.Reset(retryAfterError)
		}
	}
}

// informerSet is the writer's view of the cluster: every Service, and the
// EndpointSlices it owns.
type informerSet struct {
	factory  informers.SharedInformerFactory
	services cache.Indexer
	slices   cache.Indexer
}

func (w *Writer) startInformers(ctx context.Context) (*informerSet, error) {
	factory := informers.NewSharedInformerFactory(w.cfg.Client, 0)
	svcs := factory.Core().V1().Services().Informer()
	owned := informers.NewSharedInformerFactoryWithOptions(w.cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = discoveryv1.LabelManagedBy + "=" + ManagedBy
		}))
	sl := owned.Discovery().V1().EndpointSlices().Informer()
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.poke() },
		UpdateFunc: func(any, any) { w.poke() },
		DeleteFunc: func(any) { w.poke() },
	}
	if _, err := svcs.AddEventHandler(h); err != nil {
		return nil, fmt.Errorf("watching services: %w", err)
	}
	h.DeleteFunc = w.sliceDeleted
	if _, err := sl.AddEventHandler(h); err != nil {
		return nil, fmt.Errorf("watching endpoint slices: %w", err)
	}
	factory.Start(ctx.Done())
	owned.Start(ctx.Done())
	st := &informerSet{factory: joined{factory, owned}, services: svcs.GetIndexer(), slices: sl.GetIndexer()}
	if !cache.WaitForCacheSync(ctx.Done(), svcs.HasSynced, sl.HasSynced) {
		st.factory.Shutdown()
		return nil, fmt.Errorf("listing services and endpoint slices: %w", context.Cause(ctx))
	}
	return st, nil
}

// joined shuts two informer factories down together.
type joined struct {
	informers.SharedInformerFactory
	other informers.SharedInformerFactory
}

func (j joined) Shutdown() {
	j.SharedInformerFactory.Shutdown()
	j.other.Shutdown()
}

// sliceDeleted records a slice the watch saw deleted, and pokes.
func (w *Writer) sliceDeleted(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
		w.mu.Lock()
		w.gone[key(s)] = s.ResourceVersion
		w.mu.Unlock()
	}
	w.poke()
}

// forgetGone drops what the writer wrote of slices deleted since (their
// deletion is newer): the pass then creates them again if wanted.
func (w *Writer) forgetGone() {
	w.mu.Lock()
	gone := w.gone
	w.gone = map[string]string{}
	w.mu.Unlock()
	for k, rv := range gone {
		if mine := w.written[k]; mine != nil && newer(&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{ResourceVersion: rv}}, mine) {
			delete(w.written, k)
		}
	}
}
