// Package k8spolicy is the Kubernetes source of cross-cluster policy: it
// watches a cluster's NetworkPolicy (networking.k8s.io/v1) objects, and its
// CiliumNetworkPolicy (cilium.io/v2) objects where the API server serves
// that resource, compiles each object alone with package policy, and
// delivers the merged rules of every object's last valid version.
//
// An object is turned into the document a policy file would hold (see
// Document): what the API server adds is dropped, and features the mesh
// does not enforce make the object invalid. An invalid object is logged,
// counted and reported in Status, and its last valid version stays in the
// delivered set (a new object that was never valid contributes nothing);
// a deleted object's rules are removed.
//
// Deliveries start once every informer has synced, so that a partial set
// never replaces a complete one; after that a burst of changes is coalesced
// into one delivery, and a set that did not change is not delivered again.
// Whether CiliumNetworkPolicies are served is asked of discovery at start
// and again every Recheck, so that a CRD installed later is picked up.
package k8spolicy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	networkinginformers "k8s.io/client-go/informers/networking/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/clustermesh/clustermesh/internal/coalesce"
	"github.com/clustermesh/clustermesh/policy"
)

// Defaults of Config.
const (
	DefaultCoalesce = 50 * time.Millisecond
	DefaultRecheck  = time.Minute
)

// CiliumNetworkPolicies is the resource of CiliumNetworkPolicy objects.
var CiliumNetworkPolicies = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}

// Config of a Watcher.
type Config struct {
	// Client reads NetworkPolicies (and discovery, without Discovery).
	Client kubernetes.Interface
	// Dynamic reads CiliumNetworkPolicies; nil: NetworkPolicies only.
	Dynamic dynamic.Interface
	// Discovery tells whether CiliumNetworkPolicies are served; nil:
	// Client.Discovery().
	Discovery discovery.DiscoveryInterface
	// Options compile every object (the enforcer's PolicyOptions).
	Options policy.Options
	// OnChange receives every object's last valid version merged; it is
	// called from Run's goroutine, never concurrently.
	OnChange func(*policy.Compiled)
	// Coalesce gathers a burst of changes into one delivery
	// (DefaultCoalesce when zero).
	Coalesce time.Duration
	// Recheck is how often discovery is asked again whether
	// CiliumNetworkPolicies are served (DefaultRecheck when zero).
	Recheck time.Duration
	Logger  *slog.Logger
}

// Watcher watches a cluster's policy objects. Create with New, run once
// with Run.
type Watcher struct {
	cfg    Config
	log    *slog.Logger
	store  *store
	synced chan struct{} // closed after the first delivery

	mu     sync.Mutex
	status Status // Synced, CiliumNetworkPolicies, Rules, Deliveries; the rest from store
}

// New returns a watcher for cfg.
func New(cfg Config) (*Watcher, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("creating the policy watcher: no Kubernetes client")
	case cfg.OnChange == nil:
		return nil, errors.New("creating the policy watcher: no OnChange: pass the function that receives the policies")
	case cfg.Options.LocalCluster == "":
		return nil, errors.New("creating the policy watcher: Options.LocalCluster is empty: compile with the enforcer's PolicyOptions()")
	}
	if cfg.Discovery == nil {
		cfg.Discovery = cfg.Client.Discovery()
	}
	if cfg.Coalesce <= 0 {
		cfg.Coalesce = DefaultCoalesce
	}
	if cfg.Recheck <= 0 {
		cfg.Recheck = DefaultRecheck
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	w := &Watcher{cfg: cfg, log: cfg.Logger.With("component", "k8spolicy"), synced: make(chan struct{})}
	w.store = newStore(cfg.Options, w.invalid)
	return w, nil
}

// invalid logs an invalid object version (the store counts it).
func (w *Watcher) invalid(ref ObjectRef, err error, keptPrevious bool) {
	if keptPrevious {
		w.log.Error("invalid policy object: keeping its last valid version", "object", ref.String(), "err", err)
	} else {
		w.log.Error("invalid policy object: not enforced (fix it, or delete it)", "object", ref.String(), "err", err)
	}
}

// informer is one running informer.
type informer struct {
	synced cache.DoneChecker
	cancel context.CancelFunc
	done   chan struct{}
}

func (i *informer) stop() {
	i.cancel()
	<-i.done
}

// start runs inf with the store's handler until ctx is done or stop.
func (w *Watcher) start(ctx context.Context, resource string, inf cache.SharedIndexInformer) (*informer, error) {
	if err := inf.SetTransform(dropManagedFields); err != nil {
		return nil, fmt.Errorf("starting the %s informer: %w", resource, err)
	}
	reg, err := inf.AddEventHandler(w.store.handler())
	if err != nil {
		return nil, fmt.Errorf("starting the %s informer: %w", resource, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	// A list or watch that fails (RBAC, an unreachable API server) is
	// retried by the reflector; say why nothing is delivered yet.
	if err := inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		if ctx.Err() == nil {
			w.log.Warn("kubernetes list/watch failed, retrying (the agent needs list and watch on it)", "resource", resource, "err", err)
		}
	}); err != nil {
		cancel()
		return nil, fmt.Errorf("starting the %s informer: %w", resource, err)
	}
	i := &informer{synced: reg.HasSyncedChecker(), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(i.done)
		inf.RunWithContext(ctx)
	}()
	return i, nil
}

// cnpServed asks discovery whether CiliumNetworkPolicies are served.
func (w *Watcher) cnpServed(ctx context.Context) (bool, error) {
	gv := CiliumNetworkPolicies.GroupVersion().String()
	res, err := w.serverResources(ctx, gv)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("asking the API server for the resources of %s: %w", gv, err)
	}
	for _, r := range res {
		if r == CiliumNetworkPolicies.Resource {
			return true, nil
		}
	}
	return false, nil
}

// serverResources names the resources of gv (with ctx where the discovery
// client takes one).
func (w *Watcher) serverResources(ctx context.Context, gv string) ([]string, error) {
	var l *metav1.APIResourceList
	var err error
	if d, ok := w.cfg.Discovery.(discovery.ServerResourcesInterfaceWithContext); ok {
		l, err = d.ServerResourcesForGroupVersionWithContext(ctx, gv)
	} else {
		l, err = w.cfg.Discovery.ServerResourcesForGroupVersion(gv)
	}
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(l.APIResources))
	for _, r := range l.APIResources {
		names = append(names, r.Name)
	}
	return names, nil
}

// Run watches until ctx is done: it delivers the merged policies once the
// informers have synced, then after every change that alters them
// (coalesced). It returns nil when ctx ends, and an error only when it
// cannot start.
func (w *Watcher) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	np, err := w.start(ctx, "networkpolicies", networkinginformers.NewNetworkPolicyInformer(w.cfg.Client, "", 0, cache.Indexers{}))
	if err != nil {
		return err
	}
	defer np.stop()
	cnp := &cnpWatch{w: w}
	defer cnp.stop()
	cnp.check(ctx)
	recheck := time.NewTicker(w.recheckInterval(cnp.known))
	defer recheck.Stop()

	start := time.Now()
	if !w.awaitSync(ctx, np, cnp, recheck) {
		return nil
	}
	w.log.Info("kubernetes policy informers synced", "took", time.Since(start).Round(time.Millisecond))
	coalesce.Drain(w.store.dirty) // the initial lists poked: they are in this delivery
	w.deliver(true)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-recheck.C:
			cnp.recheck(ctx, recheck)
		case <-w.store.dirty:
			// Gather the rest of the burst, then deliver once.
			if !coalesce.Settle(ctx, w.cfg.Coalesce, w.store.dirty) {
				return nil
			}
			w.deliver(false)
		}
	}
}

// awaitSync waits until discovery has answered and every informer watched
// has synced, asking discovery again on recheck meanwhile. It returns false
// if ctx ended first.
func (w *Watcher) awaitSync(ctx context.Context, np *informer, cnp *cnpWatch, recheck *time.Ticker) bool {
	for {
		syncing := notSynced(np, cnp.inf)
		if syncing == nil && cnp.known {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-syncing:
		case <-recheck.C:
			cnp.recheck(ctx, recheck)
		case <-w.store.dirty: // the first delivery takes every change
		}
	}
}

// notSynced is the Done channel of the first informer (nil: not watched)
// that has not synced, nil when all have.
func notSynced(infs ...*informer) <-chan struct{} {
	for _, i := range infs {
		if i != nil && !cache.IsDone(i.synced) {
			return i.synced.Done()
		}
	}
	return nil
}

// cnpWatch watches CiliumNetworkPolicies while discovery says they are
// served.
type cnpWatch struct {
	w   *Watcher
	inf *informer // nil: not watched
	// known: discovery answered at least once; the first delivery waits
	// for it (CiliumNetworkPolicies may be served).
	known         bool
	saidNotServed bool
}

// recheck asks discovery again, and has ticker tick every Recheck once
// discovery first answers.
func (c *cnpWatch) recheck(ctx context.Context, ticker *time.Ticker) {
	wasKnown := c.known
	c.check(ctx)
	if c.known != wasKnown {
		ticker.Reset(c.w.recheckInterval(c.known))
	}
}

// check asks discovery whether CiliumNetworkPolicies are served, starts or
// stops their informer to match, and reports it in the watcher's status.
func (c *cnpWatch) check(ctx context.Context) {
	served, err := c.w.cnpServed(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.w.log.Warn("cannot tell whether CiliumNetworkPolicies are served, asking again later", "err", err)
		}
		return
	}
	if !c.follow(ctx, served) {
		return
	}
	c.known = true
	c.w.mu.Lock()
	c.w.status.CiliumNetworkPolicies = c.inf != nil
	c.w.mu.Unlock()
}

// follow starts or stops the informer as served says; false if it could
// not start it.
func (c *cnpWatch) follow(ctx context.Context, served bool) bool {
	w := c.w
	switch {
	case served && w.cfg.Dynamic == nil:
		if !c.saidNotServed {
			w.log.Warn("CiliumNetworkPolicies are served but there is no dynamic client: watching NetworkPolicies only")
			c.saidNotServed = true
		}
	case served && c.inf == nil:
		inf := dynamicinformer.NewFilteredDynamicInformer(w.cfg.Dynamic, CiliumNetworkPolicies, "", 0, cache.Indexers{}, nil)
		i, err := w.start(ctx, "ciliumnetworkpolicies", inf.Informer())
		if err != nil {
			w.log.Error("cannot watch CiliumNetworkPolicies", "err", err)
			return false
		}
		c.inf = i
		w.log.Info("watching CiliumNetworkPolicies")
		c.saidNotServed = false
	case !served && c.inf != nil:
		c.stop()
		w.store.removeKind(KindCiliumNetworkPolicy)
		w.log.Warn("CiliumNetworkPolicies are no longer served (their CRD was removed): their rules are removed; watching NetworkPolicies only")
	case !served && !c.saidNotServed:
		w.log.Info("the API server does not serve CiliumNetworkPolicies (cilium.io/v2): watching NetworkPolicies only, looking again every " + w.cfg.Recheck.String())
		c.saidNotServed = true
	}
	return true
}

// stop stops the informer, if running, and waits for it.
func (c *cnpWatch) stop() {
	if c.inf != nil {
		c.inf.stop()
		c.inf = nil
	}
}

// recheckInterval: Recheck once discovery answered; until then, sooner.
func (w *Watcher) recheckInterval(known bool) time.Duration {
	if !known {
		return min(w.cfg.Recheck, 5*time.Second)
	}
	return w.cfg.Recheck
}

// deliver gives OnChange the merged set if it changed (always, the first
// time).
func (w *Watcher) deliver(first bool) {
	c, changed := w.store.merged()
	if !changed && !first {
		return
	}
	w.mu.Lock()
	w.status.Synced = true
	w.status.Rules = c.Rules()
	w.status.Deliveries++
	w.mu.Unlock()
	w.cfg.OnChange(c)
	if first {
		close(w.synced)
	}
}

// Synced is closed once the informers have synced and the first set was
// delivered. The agent's enforcer waits for it (beside the agent's own
// sync) before it writes anything, so that a restarted agent never writes
// a policy map without the cluster's objects.
func (w *Watcher) Synced() <-chan struct{} { return w.synced }
