package k8smcs

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/clustermesh/clustermesh/internal/coalesce"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// Controller keeps a cluster's ServiceImports, derived Services and the
// conditions of its ServiceExports. Create with New, run with Run (once);
// SetLocalState and Status may be called at any time.
type Controller struct {
	cfg     Config
	log     *slog.Logger
	dirty   chan struct{}
	metrics *metrics
	specs   *specReader

	mu     sync.Mutex
	local  *localState // guarded by mu; nil until the first state
	status Status      // guarded by mu
}

// localState is what the controller takes of the local cluster's state.
type localState struct {
	specs    []*wire.ServiceExportSpec
	services map[string]*statesource.Service // namespace/name → service
}

// New checks cfg and returns a controller that is not yet running.
func New(cfg Config) (*Controller, error) {
	cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Controller{cfg: cfg, log: cfg.Logger.With("component", "mcs"), dirty: make(chan struct{}, 1), metrics: newMetrics()}
	c.specs = newSpecReader(cfg.ConfigDir, cfg.ClusterName, c.log, c.metrics, c.poke)
	c.status.Identity = cfg.Identity
	if cfg.ClusterSetIPRange.IsValid() {
		c.status.ClusterSetIPRange = cfg.ClusterSetIPRange.String()
	}
	return c, nil
}

// SetLocalState hands the controller the local cluster's state (its
// services and their exports, as the mesh apiserver publishes them).
func (c *Controller) SetLocalState(st *statesource.State) {
	ls := &localState{services: make(map[string]*statesource.Service, len(st.Services))}
	for i := range st.Services {
		s := st.Services[i]
		ls.services[s.Namespace+"/"+s.Name] = &s
		if spec := s.ExportSpec(c.cfg.ClusterName); spec != nil {
			ls.specs = append(ls.specs, spec)
		}
	}
	c.mu.Lock()
	c.local = ls
	c.mu.Unlock()
	c.poke()
}

// Tee returns a Source delivering src's states to onChange and to c.
func (c *Controller) Tee(src statesource.Source) statesource.Source { return tee{src, c} }

type tee struct {
	src statesource.Source
	c   *Controller
}

func (t tee) Run(ctx context.Context, onChange func(*statesource.State)) error {
	return t.src.Run(ctx, func(st *statesource.State) {
		t.c.SetLocalState(st)
		onChange(st)
	})
}

func (c *Controller) poke() {
	select {
	case c.dirty <- struct{}{}:
	default:
	}
}

// Run reads the remotes' export specs, campaigns for the Lease and, while
// it holds it, keeps the imports, until ctx ends. It returns nil when ctx
// ends.
func (c *Controller) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.specs.run(ctx)
	}()
	lead := make(chan context.Context)
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.campaign(ctx, lead)
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case lctx := <-lead:
			c.lead(lctx)
		}
	}
}

// campaign runs leader elections until ctx ends, handing each term's
// context to Run's goroutine.
func (c *Controller) campaign(ctx context.Context, lead chan<- context.Context) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: c.cfg.LeaseNamespace, Name: c.cfg.LeaseName},
		Client:     c.cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: c.cfg.Identity},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, LeaseDuration: c.cfg.LeaseDuration, RenewDeadline: c.cfg.RenewDeadline,
			RetryPeriod: c.cfg.RetryPeriod, ReleaseOnCancel: true, Name: c.cfg.LeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					select {
					case lead <- lctx:
					case <-lctx.Done():
					}
				},
				OnStoppedLeading: func() {},
				OnNewLeader: func(id string) {
					c.mu.Lock()
					c.status.Holder = id
					c.mu.Unlock()
				},
			},
		})
		if err != nil {
			c.log.Error("starting the MCS controller's leader election", "error", err)
			return
		}
		le.Run(ctx)
	}
}

// lead keeps the imports while lctx lasts (this controller holds the Lease).
func (c *Controller) lead(lctx context.Context) {
	c.setLeader(true)
	defer c.setLeader(false)
	c.log.Info("holding the MCS controllers' lease: keeping ServiceImports", "identity", c.cfg.Identity)
	if err := c.ensureServiceCIDR(lctx); err != nil {
		c.log.Warn("the ClusterSetIP range's ServiceCIDR", "error", err)
	}
	c.poke()
	retry := time.NewTimer(c.cfg.Resync)
	defer retry.Stop()
	for {
		select {
		case <-lctx.Done():
			c.log.Info("no longer holding the MCS controllers' lease", "identity", c.cfg.Identity)
			return
		case <-retry.C:
		case <-c.dirty:
			if !coalesce.Settle(lctx, c.cfg.Coalesce, c.dirty) {
				return
			}
		}
		next := c.cfg.Resync
		if err := c.pass(lctx); err != nil && lctx.Err() == nil {
			c.setError(err)
			next = retryAfterError
		}
		retry.Reset(next)
	}
}

func (c *Controller) setLeader(on bool) {
	c.mu.Lock()
	c.status.Leader = on
	c.mu.Unlock()
	v := 0.0
	if on {
		v = 1
	}
	c.metrics.leader.Set(v)
}

func (c *Controller) setError(err error) {
	c.log.Warn("MCS pass failed, retrying", "error", err)
	c.mu.Lock()
	c.status.LastError = fmt.Sprint(err)
	c.mu.Unlock()
}
