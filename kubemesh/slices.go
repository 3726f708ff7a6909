package kubemesh

import (
	"context"
	"fmt"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/k8sslices"
)

// SlicesDeleted: Cluster's EndpointSlices of Remote's backends (written by
// 'clustermesh slices', package k8sslices) were deleted on disconnect.
type SlicesDeleted struct {
	Cluster, Remote string
	Slices          int
}

func (SlicesDeleted) isStep() {}

func (s SlicesDeleted) String() string {
	return fmt.Sprintf("cluster %s: deleted %d EndpointSlices of %s's backends (%s=%s)", s.Cluster, s.Slices, s.Remote, k8sslices.LabelSourceCluster, s.Remote)
}

// ownSlices selects the EndpointSlices k8sslices writes.
const ownSlices = discoveryv1.LabelManagedBy + "=" + k8sslices.ManagedBy

// notOwnSlices leaves them out: they list remote backends, not local ones.
const notOwnSlices = discoveryv1.LabelManagedBy + "!=" + k8sslices.ManagedBy

// deleteRemoteSlices deletes m's EndpointSlices of remote's backends, in
// every namespace, and records the step when there were any. A slices
// writer still reading remote (its mounted config not yet updated) writes
// them again until its config goes, then deletes them itself.
func deleteRemoteSlices(ctx context.Context, m *meshMember, remote string, steps *[]Step) error {
	api := m.t.Client.DiscoveryV1().EndpointSlices("")
	l, err := api.List(ctx, metav1.ListOptions{LabelSelector: ownSlices + "," + k8sslices.LabelSourceCluster + "=" + remote})
	if err != nil {
		return fmt.Errorf("context %s: listing the EndpointSlices of %s's backends: %w", m.t.Context, remote, err)
	}
	n := 0
	for _, s := range l.Items {
		err := m.t.Client.DiscoveryV1().EndpointSlices(s.Namespace).Delete(ctx, s.Name,
			metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &s.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("context %s: deleting EndpointSlice %s/%s of %s's backends: %w", m.t.Context, s.Namespace, s.Name, remote, err)
		}
		n++
	}
	if n > 0 {
		*steps = append(*steps, SlicesDeleted{Cluster: m.name, Remote: remote, Slices: n})
	}
	imports, err := forgetClusterInImports(ctx, m.t, remote)
	if err != nil {
		return err
	}
	if imports > 0 {
		*steps = append(*steps, ImportsForgot{Cluster: m.name, Remote: remote, Imports: imports})
	}
	return nil
}

// ImportsForgot: Remote was taken out of the clusters of Cluster's
// ServiceImports (package k8smcs) on disconnect.
type ImportsForgot struct {
	Cluster, Remote string
	Imports         int
}

func (ImportsForgot) isStep() {}

func (s ImportsForgot) String() string {
	return fmt.Sprintf("cluster %s: took %s out of %d ServiceImports", s.Cluster, s.Remote, s.Imports)
}
