package k8ssource

import (
	"context"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	mcsinformers "sigs.k8s.io/mcs-api/pkg/client/informers/externalversions"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// MCSClientProvider is a Kubernetes client that also reaches the MCS API
// (the clients of package cli are): a Source whose MCS field is nil takes
// its MCS client from Client when Client is one.
type MCSClientProvider interface {
	MCS() mcsclient.Interface
}

// mcsClient is s.MCS, else Client's when it provides one, else nil.
func (s *Source) mcsClient() mcsclient.Interface {
	if s.MCS != nil {
		return s.MCS
	}
	if p, ok := s.Client.(MCSClientProvider); ok {
		return p.MCS()
	}
	return nil
}

// exportInformer reads the cluster's ServiceExports (multicluster.x-k8s.io/v1beta1).
type exportInformer struct {
	factory  mcsinformers.SharedInformerFactory
	informer cache.SharedIndexInformer
}

// newExportInformer returns the ServiceExport informer, or nil when there is
// no MCS client or the cluster does not serve the CRD (ServiceExports are
// then not read until the source restarts; logged).
func newExportInformer(ctx context.Context, cs mcsclient.Interface, log *slog.Logger) (*exportInformer, error) {
	if cs == nil {
		return nil, nil
	}
	gv := mcsv1beta1.GroupVersion.String()
	if _, err := cs.Discovery().ServerResourcesForGroupVersion(gv); err != nil {
		if apierrors.IsNotFound(err) {
			log.Info("the MCS API is not installed (no " + gv + "): ServiceExports are not read; install its CRDs (clustermesh enable does) and restart")
			return nil, nil
		}
		return nil, fmt.Errorf("reading the cluster's state from Kubernetes: discovering %s: %w", gv, err)
	}
	// A role without ServiceExports (an older manifest) would keep the
	// informer from ever syncing, and the whole source with it.
	if _, err := cs.MulticlusterV1beta1().ServiceExports(metav1.NamespaceAll).List(ctx, metav1.ListOptions{Limit: 1}); apierrors.IsForbidden(err) {
		log.Warn("not allowed to list ServiceExports: they are not read; grant list and watch on serviceexports.multicluster.x-k8s.io (clustermesh enable and manifests do)", "error", err)
		return nil, nil
	}
	f := mcsinformers.NewSharedInformerFactoryWithOptions(cs, 0, mcsinformers.WithTransform(dropManagedFields))
	return &exportInformer{factory: f, informer: f.Multicluster().V1beta1().ServiceExports().Informer()}, nil
}

// export returns the cached ServiceExport of namespace/name key, nil when
// there is none (or ei is nil).
func (ei *exportInformer) export(key string) *mcsv1beta1.ServiceExport {
	if ei == nil {
		return nil
	}
	o, ok, err := ei.informer.GetStore().GetByKey(key)
	if err != nil || !ok {
		return nil
	}
	e, _ := o.(*mcsv1beta1.ServiceExport)
	return e
}

// start starts the informer (nothing when ei is nil).
func (ei *exportInformer) start(ctx context.Context) {
	if ei != nil {
		ei.factory.Start(ctx.Done())
	}
}

// waitForSync waits for the informer's sync (at once when ei is nil); an
// error when it did not sync, unless ctx ended.
func (ei *exportInformer) waitForSync(ctx context.Context) error {
	if ei == nil {
		return nil
	}
	for typ, ok := range ei.factory.WaitForCacheSync(ctx.Done()) {
		if !ok && ctx.Err() == nil {
			return fmt.Errorf("reading the cluster's state from Kubernetes: the %v informer did not sync", typ)
		}
	}
	return nil
}

func (ei *exportInformer) shutdown() {
	if ei != nil {
		ei.factory.Shutdown()
	}
}

// serviceExport is the statesource.Export of the Service s exported by e.
func serviceExport(s *corev1.Service, e *mcsv1beta1.ServiceExport) *statesource.Export {
	x := &statesource.Export{Created: e.CreationTimestamp.Time, Labels: e.Spec.ExportedLabels, Annotations: e.Spec.ExportedAnnotations}
	if s.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		x.SessionAffinity = wire.SessionAffinityClientIP
		if c := s.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			x.AffinityTimeout = *c.ClientIP.TimeoutSeconds
		}
	}
	return x
}
