package kubemesh

import (
	"context"
	"fmt"
	"slices"
	"strings"

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

// importLine is one ServiceImport as status prints it.
func importLine(si *mcsv1beta1.ServiceImport) string {
	var cs []string
	for _, c := range si.Status.Clusters {
		cs = append(cs, c.Cluster)
	}
	ips := "headless"
	if len(si.Spec.IPs) > 0 {
		ips = strings.Join(si.Spec.IPs, ", ")
	}
	return fmt.Sprintf("%s/%s: %s %s, clusters %s", si.Namespace, si.Name, si.Spec.Type, ips, strings.Join(cs, ", "))
}
