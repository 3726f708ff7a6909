package k8sslices

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/merge"
)

// pass computes every wanted slice and writes the difference with what the
// API server holds. It reports whether every write succeeded.
func (w *Writer) pass(ctx context.Context, st *informerSet) bool {
	w.forgetGone()
	want, svcStatus := w.desired(st)
	ok := true
	names := slices.Sorted(maps.Keys(want))
	for _, k := range names {
		if ctx.Err() != nil {
			return false
		}
		ok = w.ensure(ctx, st, k, want[k]) && ok
	}
	for _, obj := range st.slices.List() {
		s := obj.(*discoveryv1.EndpointSlice)
		k := key(s)
		if _, keep := want[k]; keep || w.deleted[k] == s.UID {
			continue
		}
		ok = w.remove(ctx, s) && ok
	}
	w.forgetDeleted(st)
	w.setServices(svcStatus, len(want))
	return ok
}

// desired is every slice the wanted services should have, by
// namespace/name, with the services' status.
func (w *Writer) desired(st *informerSet) (map[string]*discoveryv1.EndpointSlice, []ServiceStatus) {
	want := map[string]*discoveryv1.EndpointSlice{}
	var out []ServiceStatus
	for _, obj := range st.services.List() {
		svc := obj.(*corev1.Service)
		if !wanted(svc, w.cfg.AllGlobal) {
			continue
		}
		remotes := w.cfg.Source.RemoteBackends(merge.ServiceName{Namespace: svc.Namespace, Name: svc.Name})
		ss := ServiceStatus{Namespace: svc.Namespace, Name: svc.Name}
		for _, s := range desiredSlices(svc, remotes, w.cfg.MaxEndpointsPerSlice, w.droppedTopology) {
			want[key(s)] = s
			ss.Slices = append(ss.Slices, SliceStatus{Name: s.Name, Cluster: s.Labels[LabelSourceCluster], Endpoints: len(s.Endpoints)})
		}
		slices.SortFunc(ss.Slices, func(a, b SliceStatus) int { return compareStrings(a.Cluster+"/"+a.Name, b.Cluster+"/"+b.Name) })
		out = append(out, ss)
	}
	slices.SortFunc(out, func(a, b ServiceStatus) int { return compareStrings(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) })
	return want, out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func key(s *discoveryv1.EndpointSlice) string { return s.Namespace + "/" + s.Name }

// current is the newest version of slice k the writer knows: its cache's,
// or what it wrote itself when the cache has not caught up yet.
func (w *Writer) current(st *informerSet, k string) *discoveryv1.EndpointSlice {
	var cached *discoveryv1.EndpointSlice
	if obj, ok, _ := st.slices.GetByKey(k); ok {
		cached = obj.(*discoveryv1.EndpointSlice)
		if uid, gone := w.deleted[k]; gone && uid == cached.UID {
			cached = nil
		}
	}
	mine := w.written[k]
	switch {
	case mine == nil:
		return cached
	case cached != nil && newer(cached, mine):
		delete(w.written, k) // the cache caught up
		return cached
	}
	return mine
}

// newer reports whether a's resourceVersion is at least b's. Kubernetes
// says resource versions are opaque; the API server gives etcd revisions,
// which grow, and the comparison only picks between two reads of one object.
func newer(a, b *discoveryv1.EndpointSlice) bool {
	ra, errA := strconv.ParseUint(a.ResourceVersion, 10, 64)
	rb, errB := strconv.ParseUint(b.ResourceVersion, 10, 64)
	if errA != nil || errB != nil {
		return true
	}
	return ra >= rb
}

// same reports whether have already says what want says.
func same(have, want *discoveryv1.EndpointSlice) bool {
	return maps.Equal(have.Labels, want.Labels) &&
		apiequality.Semantic.DeepEqual(have.OwnerReferences, want.OwnerReferences) &&
		have.AddressType == want.AddressType &&
		apiequality.Semantic.DeepEqual(have.Endpoints, want.Endpoints) &&
		apiequality.Semantic.DeepEqual(have.Ports, want.Ports)
}

// ensure creates or updates slice k to want.
func (w *Writer) ensure(ctx context.Context, st *informerSet, k string, want *discoveryv1.EndpointSlice) bool {
	have := w.current(st, k)
	api := w.cfg.Client.DiscoveryV1().EndpointSlices(want.Namespace)
	start := time.Now()
	var got *discoveryv1.EndpointSlice
	var err error
	op := opCreate
	if have == nil {
		got, err = api.Create(ctx, want, metav1.CreateOptions{})
	} else {
		if same(have, want) {
			return true
		}
		op = opUpdate
		upd := have.DeepCopy()
		upd.Labels, upd.OwnerReferences = want.Labels, want.OwnerReferences
		upd.Endpoints, upd.Ports = want.Endpoints, want.Ports
		got, err = api.Update(ctx, upd, metav1.UpdateOptions{})
	}
	if !w.wrote(op, k, err, time.Since(start)) {
		return false
	}
	delete(w.deleted, k)
	w.written[k] = got
	return true
}

// remove deletes an owned slice that is no longer wanted.
func (w *Writer) remove(ctx context.Context, s *discoveryv1.EndpointSlice) bool {
	k := key(s)
	start := time.Now()
	err := w.cfg.Client.DiscoveryV1().EndpointSlices(s.Namespace).Delete(ctx, s.Name,
		metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &s.UID}})
	if apierrors.IsNotFound(err) {
		err = nil // gone already: another writer, or an operator
	}
	delete(w.written, k)
	if !w.wrote(opDelete, k, err, time.Since(start)) {
		return false
	}
	w.deleted[k] = s.UID
	return true
}

// wrote counts a write and logs a failure; it reports success.
func (w *Writer) wrote(op, k string, err error, took time.Duration) bool {
	if err == nil {
		w.metrics.writes.WithLabelValues(op).Inc()
		w.metrics.writeSeconds.Observe(took.Seconds())
		w.count(func(s *Status) { s.Writes++ })
		return true
	}
	if errors.Is(err, context.Canceled) {
		return false // the term or the writer ended: nothing failed
	}
	if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
		// Another writer, or a slice of that name this writer does not
		// own: the next pass reads again.
		w.metrics.conflicts.Inc()
		w.count(func(s *Status) { s.Conflicts++ })
		if ok, n := w.conflictLog.Allow(k, time.Now()); ok {
			w.log.Warn("endpoint slice conflict: retrying with what the API server holds (a slice of that name without our managed-by label is never touched)",
				"slice", k, "op", op, "error", err, "suppressed", n)
		}
		return false
	}
	w.metrics.writeErrors.WithLabelValues(op).Inc()
	w.count(func(s *Status) { s.WriteErrors++; s.LastError = err.Error() })
	if ok, n := w.conflictLog.Allow(op, time.Now()); ok {
		w.log.Error("writing an endpoint slice", "slice", k, "op", op, "error", err, "suppressed", n)
	}
	return false
}

// forgetDeleted drops the record of a deletion once the cache no longer
// holds the deleted object.
func (w *Writer) forgetDeleted(st *informerSet) {
	for k, uid := range w.deleted {
		obj, ok, _ := st.slices.GetByKey(k)
		if !ok || obj.(*discoveryv1.EndpointSlice).UID != uid {
			delete(w.deleted, k)
		}
	}
}

// droppedTopology counts and logs (once a minute per cluster) a remote's
// topology value left out of a slice.
func (w *Writer) droppedTopology(d topologyDrop) {
	w.metrics.topologyDropped.Inc()
	if ok, n := w.conflictLog.Allow("topology/"+d.cluster, time.Now()); ok {
		w.log.Warn("a remote backend's topology value is not valid in an EndpointSlice: left out, the endpoint written without it (fix it in that cluster)",
			"drop", d.String(), "suppressed", n)
	}
}
