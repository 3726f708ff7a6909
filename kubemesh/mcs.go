package kubemesh

import (
	"context"
	"fmt"
	"maps"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/k8smcs"
)

// The Multi-Cluster Services API (docs/mcs.md): Enable installs its CRDs
// (ServiceExport, ServiceImport; Disable leaves them, with the users'
// exports in them), the apiserver's and the agents' roles read
// ServiceExports, and Disconnect takes the disconnected cluster out of the
// ServiceImports' clusters.

// mcsGroup is the MCS API's group.
const mcsGroup = "multicluster.x-k8s.io"

// crdGVR is the resource of CustomResourceDefinitions.
var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// mcsCRDObjects are the MCS API's CRDs, as sigs.k8s.io/mcs-api ships them.
func mcsCRDObjects() ([]runtime.Object, error) {
	var out []runtime.Object
	for _, doc := range k8smcs.CRDs() {
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return nil, fmt.Errorf("reading the MCS API's CRDs: %w", err)
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
	return out, nil
}

// isCRD reports whether obj is an unstructured CustomResourceDefinition.
func isCRD(obj runtime.Object) bool {
	u, ok := obj.(*unstructured.Unstructured)
	return ok && u.GetKind() == "CustomResourceDefinition"
}

// forgetClusterInImports removes cluster from the status.clusters of the
// ServiceImports of t's cluster (the MCS controller, once its remotes
// secret no longer names cluster, would do it too, within a minute); it
// returns how many it changed. A cluster without the MCS API has none.
func forgetClusterInImports(ctx context.Context, t *Target, cluster string) (int, error) {
	mc, err := mcsclient.NewForConfig(t.Config)
	if err != nil {
		return 0, fmt.Errorf("context %s: building the MCS API client: %w", t.Context, err)
	}
	sis, err := mc.MulticlusterV1beta1().ServiceImports(metav1.NamespaceAll).List(ctx, metav1.ListOptions{LabelSelector: k8smcs.LabelManagedBy + "=" + k8smcs.ManagedBy})
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("context %s: listing ServiceImports: %w", t.Context, err)
	}
	n := 0
	for i := range sis.Items {
		si := &sis.Items[i]
		kept := slices.DeleteFunc(slices.Clone(si.Status.Clusters), func(c mcsv1beta1.ClusterStatus) bool { return c.Cluster == cluster })
		if len(kept) == len(si.Status.Clusters) {
			continue
		}
		si.Status.Clusters = kept
		if _, err := mc.MulticlusterV1beta1().ServiceImports(si.Namespace).UpdateStatus(ctx, si, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return n, fmt.Errorf("context %s: taking %s out of the ServiceImport %s/%s: %w", t.Context, cluster, si.Namespace, si.Name, err)
		}
		n++
	}
	return n, nil
}

// ServiceSlices are the EndpointSlices of remote backends 'clustermesh
// slices' wrote for one service.
type ServiceSlices struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Slices    int      `json:"slices"`
	Endpoints int      `json:"endpoints"`
	Clusters  []string `json:"clusters"`
}

// ImportSummary is one ServiceImport and the slices of its remote backends.
type ImportSummary struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Type      string   `json:"type"`
	IPs       []string `json:"ips,omitempty"`
	Clusters  []string `json:"clusters"`
	Slices    int      `json:"slices"`
	Endpoints int      `json:"endpoints"`
}

// ExportConflict is a local ServiceExport in conflict (Conflict=True).
type ExportConflict struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Reason    string `json:"reason"`
	Message   string `json:"message"`
}

// readSlicesAndImports reads the slices the writer wrote, the
// ServiceImports and the local exports in conflict (none of the MCS API's
// when the cluster does not serve it).
func (st *Status) readSlicesAndImports(ctx context.Context, t *Target) error {
	l, err := t.Client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, metav1.ListOptions{LabelSelector: ownSlices})
	if err != nil {
		return fmt.Errorf("context %s: listing the EndpointSlices of remote backends: %w", t.Context, err)
	}
	bySvc := map[string]*ServiceSlices{}
	byImport := map[string][2]int{}
	for _, s := range l.Items {
		key := s.Namespace + "/" + s.Labels["kubernetes.io/service-name"]
		ss := bySvc[key]
		if ss == nil {
			ss = &ServiceSlices{Namespace: s.Namespace, Name: s.Labels["kubernetes.io/service-name"]}
			bySvc[key] = ss
		}
		ss.Slices++
		ss.Endpoints += len(s.Endpoints)
		if c := s.Labels["clustermesh.io/source-cluster"]; !slices.Contains(ss.Clusters, c) {
			ss.Clusters = append(ss.Clusters, c)
		}
		if n := s.Labels[k8smcs.LabelServiceName]; n != "" {
			v := byImport[s.Namespace+"/"+n]
			byImport[s.Namespace+"/"+n] = [2]int{v[0] + 1, v[1] + len(s.Endpoints)}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(bySvc)) {
		slices.Sort(bySvc[k].Clusters)
		st.Slices = append(st.Slices, *bySvc[k])
	}
	mc, err := mcsclient.NewForConfig(t.Config)
	if err != nil {
		return fmt.Errorf("context %s: building the MCS API client: %w", t.Context, err)
	}
	sis, err := mc.MulticlusterV1beta1().ServiceImports(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		return nil // no MCS API here
	}
	if err != nil {
		return fmt.Errorf("context %s: listing ServiceImports: %w", t.Context, err)
	}
	for _, si := range sis.Items {
		im := ImportSummary{Namespace: si.Namespace, Name: si.Name, Type: string(si.Spec.Type), IPs: si.Spec.IPs}
		for _, c := range si.Status.Clusters {
			im.Clusters = append(im.Clusters, c.Cluster)
		}
		v := byImport[si.Namespace+"/"+si.Name]
		im.Slices, im.Endpoints = v[0], v[1]
		st.Imports = append(st.Imports, im)
	}
	exps, err := mc.MulticlusterV1beta1().ServiceExports(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("context %s: listing ServiceExports: %w", t.Context, err)
	}
	for _, e := range exps.Items {
		for _, c := range e.Status.Conditions {
			if c.Type == string(mcsv1beta1.ServiceExportConditionConflict) && c.Status == metav1.ConditionTrue {
				st.ExportConflicts = append(st.ExportConflicts, ExportConflict{Namespace: e.Namespace, Name: e.Name, Reason: c.Reason, Message: c.Message})
			}
		}
	}
	return nil
}
