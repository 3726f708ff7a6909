package k8smcs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// pass brings the cluster's ServiceImports, derived Services and
// ServiceExport conditions to what every cluster's exports say. Before the
// first local state nothing is written; imports are deleted only once every
// remote's exports have been listed (a restarted controller never deletes
// an import because it has not read its exporter yet).
func (c *Controller) pass(ctx context.Context) error {
	c.mu.Lock()
	local := c.local
	c.mu.Unlock()
	if local == nil {
		return nil
	}
	all := slices.Clone(local.specs)
	for _, ss := range c.specs.specs() {
		all = append(all, ss...)
	}
	imports := resolve(all)

	sel := metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ManagedBy}
	sis, err := c.cfg.MCS.MulticlusterV1beta1().ServiceImports(metav1.NamespaceAll).List(ctx, sel)
	if err != nil {
		return fmt.Errorf("listing ServiceImports: %w", err)
	}
	svcs, err := c.cfg.Client.CoreV1().Services(metav1.NamespaceAll).List(ctx, sel)
	if err != nil {
		return fmt.Errorf("listing derived services: %w", err)
	}
	haveImport := map[string]*mcsv1beta1.ServiceImport{}
	for i := range sis.Items {
		haveImport[sis.Items[i].Namespace+"/"+sis.Items[i].Name] = &sis.Items[i]
	}
	haveDerived := map[string]*corev1.Service{}
	used := map[netip.Addr]bool{}
	for i := range svcs.Items {
		s := &svcs.Items[i]
		haveDerived[s.Namespace+"/"+s.Labels[LabelServiceName]] = s
		if a, err := netip.ParseAddr(s.Spec.ClusterIP); err == nil {
			used[a] = true
		}
	}

	var errs []error
	var status []ImportStatus
	conflicts := 0
	for _, key := range slices.Sorted(maps.Keys(imports)) {
		im := imports[key]
		conflicts += len(im.Conflicts)
		ist, err := c.keepImport(ctx, im, local.services[key], haveImport[key], haveDerived[key], used)
		if err != nil {
			errs = append(errs, err)
		}
		status = append(status, ist)
	}
	if c.specs.allListed() {
		errs = append(errs, c.deleteStale(ctx, imports, haveImport, haveDerived)...)
	}
	errs = append(errs, c.keepExportConditions(ctx, local, imports)...)

	c.metrics.imports.Set(float64(len(imports)))
	c.metrics.conflicts.Set(float64(conflicts))
	err = errors.Join(errs...)
	c.mu.Lock()
	c.status.Imports = status
	if err == nil {
		c.status.LastError = ""
	}
	c.mu.Unlock()
	return err
}

// keepImport keeps im's ServiceImport and derived Service.
func (c *Controller) keepImport(ctx context.Context, im *Import, local *statesource.Service, si *mcsv1beta1.ServiceImport, svc *corev1.Service, used map[netip.Addr]bool) (ImportStatus, error) {
	st := ImportStatus{Namespace: im.Namespace, Name: im.Name, Type: im.Type, Derived: DerivedName(im.Namespace, im.Name),
		Ports: portsString(im.Ports), Winner: im.Winner, Clusters: im.Clusters, Conflicts: im.Conflicts}
	sis := c.cfg.MCS.MulticlusterV1beta1().ServiceImports(im.Namespace)
	labels, annotations := importMeta(im)
	if si == nil {
		created, err := sis.Create(ctx, &mcsv1beta1.ServiceImport{
			ObjectMeta: metav1.ObjectMeta{Namespace: im.Namespace, Name: im.Name, Labels: labels, Annotations: annotations},
			Spec:       importSpec(im, nil)}, metav1.CreateOptions{})
		if err != nil {
			c.writeFailed("serviceimport", "create")
			return st, fmt.Errorf("creating the ServiceImport %s: %w", im.key(), err)
		}
		c.wrote("serviceimport", "create")
		si = created
	}
	svc, err := c.keepDerived(ctx, im, local, si, svc, used)
	if err != nil {
		return st, err
	}
	var ips []string
	if im.Type == wire.ImportClusterSetIP && svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone {
		ips = []string{svc.Spec.ClusterIP}
	}
	st.IPs = ips
	if want := importSpec(im, ips); !equality.Semantic.DeepEqual(si.Spec, want) || !maps.Equal(si.Labels, labels) || !maps.Equal(si.Annotations, annotations) {
		si = si.DeepCopy()
		si.Spec, si.Labels, si.Annotations = want, labels, annotations
		updated, err := sis.Update(ctx, si, metav1.UpdateOptions{})
		if err != nil {
			c.writeFailed("serviceimport", "update")
			return st, fmt.Errorf("updating the ServiceImport %s: %w", im.key(), err)
		}
		c.wrote("serviceimport", "update")
		si = updated
	}
	if want := importClusters(im); !equality.Semantic.DeepEqual(si.Status.Clusters, want) {
		si = si.DeepCopy()
		si.Status.Clusters = want
		if _, err := sis.UpdateStatus(ctx, si, metav1.UpdateOptions{}); err != nil {
			c.writeFailed("serviceimport", "update")
			return st, fmt.Errorf("updating the status of the ServiceImport %s: %w", im.key(), err)
		}
		c.wrote("serviceimport", "update")
	}
	return st, nil
}

// keepDerived keeps im's derived Service; it returns it as the API server has it.
func (c *Controller) keepDerived(ctx context.Context, im *Import, local *statesource.Service, si *mcsv1beta1.ServiceImport, svc *corev1.Service, used map[netip.Addr]bool) (*corev1.Service, error) {
	api := c.cfg.Client.CoreV1().Services(im.Namespace)
	if svc != nil && !c.keepsIP(im, svc) {
		// Headless and ClusterSetIP, or an address out of the range: the
		// cluster IP is immutable, so the Service is made again.
		if err := c.deleteService(ctx, svc); err != nil {
			return nil, err
		}
		svc = nil
	}
	if svc == nil {
		return c.createDerived(ctx, derivedService(c.cfg.ClusterName, im, local, si, ""), used)
	}
	want := derivedService(c.cfg.ClusterName, im, local, si, svc.Spec.ClusterIP)
	if derivedEqual(svc, want) {
		return svc, nil
	}
	upd := svc.DeepCopy()
	maps.Copy(upd.Labels, want.Labels)
	if upd.Annotations == nil {
		upd.Annotations = map[string]string{}
	}
	if _, ok := want.Annotations[AnnotationAffinity]; !ok {
		delete(upd.Annotations, AnnotationAffinity)
	}
	maps.Copy(upd.Annotations, want.Annotations)
	upd.OwnerReferences = want.OwnerReferences
	upd.Spec.Selector, upd.Spec.Ports = want.Spec.Selector, want.Spec.Ports
	upd.Spec.SessionAffinity, upd.Spec.SessionAffinityConfig = want.Spec.SessionAffinity, want.Spec.SessionAffinityConfig
	updated, err := api.Update(ctx, upd, metav1.UpdateOptions{})
	if err != nil {
		c.writeFailed("service", "update")
		return nil, fmt.Errorf("updating the derived service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	c.wrote("service", "update")
	return updated, nil
}

// keepsIP reports whether svc's cluster IP suits im.
func (c *Controller) keepsIP(im *Import, svc *corev1.Service) bool {
	headless := svc.Spec.ClusterIP == corev1.ClusterIPNone
	if headless != (im.Type == wire.ImportHeadless) {
		return false
	}
	if r := c.cfg.ClusterSetIPRange; r.IsValid() && !headless {
		a, err := netip.ParseAddr(svc.Spec.ClusterIP)
		return err == nil && r.Contains(a)
	}
	return true
}

// derivedEqual reports whether have already is want in what the
// controller sets.
func derivedEqual(have, want *corev1.Service) bool {
	for k, v := range want.Labels {
		if have.Labels[k] != v {
			return false
		}
	}
	for k, v := range want.Annotations {
		if have.Annotations[k] != v {
			return false
		}
	}
	if _, ok := want.Annotations[AnnotationAffinity]; !ok && have.Annotations[AnnotationAffinity] != "" {
		return false
	}
	if len(have.Spec.Ports) != len(want.Spec.Ports) {
		return false
	}
	for i, p := range want.Spec.Ports {
		h := have.Spec.Ports[i]
		if h.Name != p.Name || h.Protocol != p.Protocol || h.Port != p.Port || h.TargetPort != p.TargetPort {
			return false
		}
	}
	return maps.Equal(have.Spec.Selector, want.Spec.Selector) && have.Spec.SessionAffinity == want.Spec.SessionAffinity &&
		equality.Semantic.DeepEqual(have.OwnerReferences, want.OwnerReferences) &&
		(want.Spec.SessionAffinityConfig == nil || equality.Semantic.DeepEqual(have.Spec.SessionAffinityConfig, want.Spec.SessionAffinityConfig))
}

// deleteStale deletes the imports and derived Services of services no
// cluster exports any more.
func (c *Controller) deleteStale(ctx context.Context, imports map[string]*Import, haveImport map[string]*mcsv1beta1.ServiceImport, haveDerived map[string]*corev1.Service) []error {
	var errs []error
	for key, svc := range haveDerived {
		if imports[key] == nil {
			if err := c.deleteService(ctx, svc); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for key, si := range haveImport {
		if imports[key] != nil {
			continue
		}
		err := c.cfg.MCS.MulticlusterV1beta1().ServiceImports(si.Namespace).Delete(ctx, si.Name, preconditions(si.UID))
		if err != nil && !apierrors.IsNotFound(err) {
			c.writeFailed("serviceimport", "delete")
			errs = append(errs, fmt.Errorf("deleting the ServiceImport %s: %w", key, err))
			continue
		}
		c.wrote("serviceimport", "delete")
		c.log.Info("no cluster exports the service any more: ServiceImport deleted", "service", key)
	}
	return errs
}

func (c *Controller) deleteService(ctx context.Context, svc *corev1.Service) error {
	err := c.cfg.Client.CoreV1().Services(svc.Namespace).Delete(ctx, svc.Name, preconditions(svc.UID))
	if err != nil && !apierrors.IsNotFound(err) {
		c.writeFailed("service", "delete")
		return fmt.Errorf("deleting the derived service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	c.wrote("service", "delete")
	return nil
}

func preconditions(uid types.UID) metav1.DeleteOptions {
	return metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}
}

// keepExportConditions sets Valid and Conflict on every local ServiceExport.
func (c *Controller) keepExportConditions(ctx context.Context, local *localState, imports map[string]*Import) []error {
	exps, err := c.cfg.MCS.MulticlusterV1beta1().ServiceExports(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return []error{fmt.Errorf("listing ServiceExports: %w", err)}
	}
	var errs []error
	for i := range exps.Items {
		e := &exps.Items[i]
		key := e.Namespace + "/" + e.Name
		var svc *statesource.Service
		if s := local.services[key]; s != nil && s.Export != nil {
			svc = s
		}
		if !setConditions(&e.Status.Conditions, exportConditions(c.cfg.ClusterName, svc, imports[key]), e.Generation) {
			continue
		}
		_, err := c.cfg.MCS.MulticlusterV1beta1().ServiceExports(e.Namespace).UpdateStatus(ctx, e, metav1.UpdateOptions{})
		if apierrors.IsNotFound(err) {
			continue // deleted since the list: nothing to say on it
		}
		if err != nil {
			c.writeFailed("serviceexport", "update")
			errs = append(errs, fmt.Errorf("updating the conditions of the ServiceExport %s: %w", key, err))
			continue
		}
		c.wrote("serviceexport", "update")
	}
	return errs
}

func (c *Controller) wrote(object, op string) {
	c.metrics.writes.WithLabelValues(object, op).Inc()
	c.mu.Lock()
	c.status.Writes++
	c.mu.Unlock()
}

func (c *Controller) writeFailed(object, op string) {
	c.metrics.writeErrors.WithLabelValues(object, op).Inc()
	c.mu.Lock()
	c.status.WriteErrors++
	c.mu.Unlock()
}
