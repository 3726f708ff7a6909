package k8smcs

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// DerivedName is the name of the derived Service of namespace/name: the
// same in every cluster, so that the mesh merges the clusters' derived
// Services as one global service.
func DerivedName(namespace, name string) string {
	h := sha256.Sum256([]byte(namespace + "/" + name))
	return DerivedPrefix + hex.EncodeToString(h[:])[:10]
}

// importSpec is the spec of im's ServiceImport with ips.
func importSpec(im *Import, ips []string) mcsv1beta1.ServiceImportSpec {
	spec := mcsv1beta1.ServiceImportSpec{Type: mcsv1beta1.ServiceImportType(im.Type), IPs: ips,
		SessionAffinity: corev1.ServiceAffinity(im.SessionAffinity), Ports: []mcsv1beta1.ServicePort{}}
	if im.AffinityTimeout != nil {
		t := *im.AffinityTimeout
		spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &t}}
	}
	for _, p := range im.Ports {
		spec.Ports = append(spec.Ports, mcsv1beta1.ServicePort{Name: p.Name, Protocol: corev1.Protocol(p.Protocol), AppProtocol: p.AppProtocol, Port: p.Port})
	}
	return spec
}

// importMeta returns the labels and annotations of im's ServiceImport: the
// winner's exported ones, and LabelManagedBy.
func importMeta(im *Import) (labels, annotations map[string]string) {
	labels = maps.Clone(im.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[LabelManagedBy] = ManagedBy
	return labels, maps.Clone(im.Annotations)
}

// importClusters is status.clusters of im.
func importClusters(im *Import) []mcsv1beta1.ClusterStatus {
	out := make([]mcsv1beta1.ClusterStatus, 0, len(im.Clusters))
	for _, c := range im.Clusters {
		out = append(out, mcsv1beta1.ClusterStatus{Cluster: c})
	}
	return out
}

// derivedService is the derived Service of im in cluster: global, its
// remote backends written as EndpointSlices (labelled with the imported
// name by k8sslices), owned by the ServiceImport; labelled with the
// imported name and the cluster, which the endpoint slice controller copies
// to the slices of its local pods (so CoreDNS's multicluster zone finds
// them too); selecting the local
// service's pods when the local cluster exports it without conflict;
// headless for a Headless import, else with clusterIP (empty: Kubernetes
// allocates).
func derivedService(cluster string, im *Import, local *statesource.Service, owner *mcsv1beta1.ServiceImport, clusterIP string) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: im.Namespace, Name: DerivedName(im.Namespace, im.Name),
			Labels:      map[string]string{LabelManagedBy: ManagedBy, LabelServiceName: im.Name, LabelSourceCluster: cluster},
			Annotations: map[string]string{AnnotationGlobal: "true", AnnotationSyncEndpointSlices: "true"},
		},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: clusterIP,
			SessionAffinity: corev1.ServiceAffinity(im.SessionAffinity)},
	}
	if owner != nil {
		svc.OwnerReferences = []metav1.OwnerReference{{APIVersion: mcsv1beta1.GroupVersion.String(), Kind: mcsv1beta1.ServiceImportKindName,
			Name: owner.Name, UID: owner.UID}}
	}
	if im.Type == wire.ImportHeadless {
		svc.Spec.ClusterIP = corev1.ClusterIPNone
	}
	if im.AffinityTimeout != nil && im.SessionAffinity == wire.SessionAffinityClientIP {
		t := *im.AffinityTimeout
		svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &t}}
	}
	exporting := local != nil && slices.Contains(im.Clusters, cluster)
	if exporting {
		svc.Spec.Selector = maps.Clone(local.Selector)
		if a := local.Annotations[AnnotationAffinity]; a != "" {
			svc.Annotations[AnnotationAffinity] = a
		}
	}
	for _, p := range im.Ports {
		sp := corev1.ServicePort{Name: p.Name, Protocol: corev1.Protocol(p.Protocol), AppProtocol: p.AppProtocol, Port: p.Port,
			TargetPort: intstr.FromInt32(p.Port)}
		if exporting {
			for _, lp := range local.Ports {
				if lp.Name == p.Name && lp.Proto() == p.Protocol && int32(lp.Port) == p.Port {
					sp.TargetPort = intstr.FromInt32(int32(lp.Target()))
				}
			}
		}
		svc.Spec.Ports = append(svc.Spec.Ports, sp)
	}
	return svc
}

// exportConditions are the conditions Valid and Conflict of the local
// ServiceExport of namespace/name: valid when the local state has its
// Service; in conflict when its export is one of im's conflicts.
func exportConditions(cluster string, local *statesource.Service, im *Import) []metav1.Condition {
	valid := metav1.Condition{Type: string(mcsv1beta1.ServiceExportConditionValid), Status: metav1.ConditionTrue,
		Reason: string(mcsv1beta1.ServiceExportReasonValid), Message: "the service is exported"}
	if local == nil {
		valid = metav1.Condition{Type: valid.Type, Status: metav1.ConditionFalse,
			Reason: string(mcsv1beta1.ServiceExportReasonNoService), Message: "no Service of this name in the namespace (ExternalName services cannot be exported): create it"}
	}
	conflict := metav1.Condition{Type: string(mcsv1beta1.ServiceExportConditionConflict), Status: metav1.ConditionFalse,
		Reason: string(mcsv1beta1.ServiceExportReasonNoConflicts), Message: "no conflict with the exports of other clusters"}
	if im != nil {
		if c, ok := im.Conflicts[cluster]; ok {
			conflict = metav1.Condition{Type: conflict.Type, Status: metav1.ConditionTrue, Reason: c.Reason,
				Message: c.Message + "; this cluster's backends are not part of the imported service until it agrees"}
		}
	}
	return []metav1.Condition{valid, conflict}
}

// setConditions sets want on have (keeping the transition time of a
// condition whose status did not change); it reports whether have changed.
func setConditions(have *[]metav1.Condition, want []metav1.Condition, generation int64) bool {
	changed := false
	for _, w := range want {
		w.ObservedGeneration = generation
		i := slices.IndexFunc(*have, func(c metav1.Condition) bool { return c.Type == w.Type })
		if i < 0 {
			w.LastTransitionTime = metav1.Now()
			*have = append(*have, w)
			changed = true
			continue
		}
		h := &(*have)[i]
		if h.Status == w.Status && h.Reason == w.Reason && h.Message == w.Message && h.ObservedGeneration == w.ObservedGeneration {
			continue
		}
		w.LastTransitionTime = h.LastTransitionTime
		if h.Status != w.Status {
			w.LastTransitionTime = metav1.Now()
		}
		*h = w
		changed = true
	}
	return changed
}
