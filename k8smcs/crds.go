package k8smcs

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/mcs-api/config/crd"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	"sigs.k8s.io/yaml"
)

// CRDs returns the MCS API's CustomResourceDefinitions (ServiceExport and
// ServiceImport, multicluster.x-k8s.io, as sigs.k8s.io/mcs-api v0.5.2
// ships them) as YAML documents.
func CRDs() [][]byte { return [][]byte{crd.ServiceExportCRD, crd.ServiceImportCRD} }

// InstallCRDs creates the MCS API's CRDs in the cluster of client (those
// already there are left as they are) and waits until it serves them.
func InstallCRDs(ctx context.Context, client kubernetes.Interface) error {
	rc := client.Discovery().RESTClient()
	for _, doc := range CRDs() {
		body, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return fmt.Errorf("installing the MCS API's CRDs: %w", err)
		}
		err = rc.Post().AbsPath("/apis/apiextensions.k8s.io/v1/customresourcedefinitions").
			SetHeader("Content-Type", "application/json").Body(body).Do(ctx).Error()
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("installing the MCS API's CRDs: %w", err)
		}
	}
	gv := mcsv1beta1.GroupVersion.String()
	for {
		rl, err := client.Discovery().ServerResourcesForGroupVersion(gv)
		if err == nil && len(rl.APIResources) >= 4 { // both kinds and their status
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("installing the MCS API's CRDs: %s not served yet: %w", gv, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
