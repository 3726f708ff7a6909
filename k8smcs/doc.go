// Package k8smcs owns the Multi-Cluster Services API (KEP-1645) of a
// cluster: from the export specs of every cluster (its own from the local
// state, statesource.Service.Export; the remotes' read from their mesh
// apiservers under cilium/state/serviceexports/v1), it keeps one
// ServiceImport per exported service name (type ClusterSetIP or Headless,
// ports, the ClusterSetIP in spec.ips, the exporting clusters in
// status.clusters), a derived Service per import (derived-<hash>, an
// ordinary global Service whose cluster IP is the ClusterSetIP: the mesh's
// merge, socket load balancer and EndpointSlices then apply to it
// unchanged), and the conditions Valid and Conflict of the local
// ServiceExports (the oldest export wins). One controller writes per
// cluster, elected through a Lease. See docs/mcs.md.
package k8smcs

import "errors"

// Labels and annotations the controller sets or reads.
const (
	// LabelManagedBy (app.kubernetes.io/managed-by) is ManagedBy on every
	// ServiceImport and derived Service the controller owns; it never
	// touches those without it.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "mcs.clustermesh.io"
	// LabelServiceName (multicluster.kubernetes.io/service-name) names the
	// imported service on its derived Service (and, through k8sslices, on
	// the EndpointSlices of its remote backends).
	LabelServiceName = "multicluster.kubernetes.io/service-name"
	// LabelSourceCluster (multicluster.kubernetes.io/source-cluster) names
	// the local cluster on its derived Services.
	LabelSourceCluster = "multicluster.kubernetes.io/source-cluster"
	// AnnotationGlobal, AnnotationSyncEndpointSlices and AnnotationAffinity
	// are Cilium's global-service annotations, set on derived Services.
	AnnotationGlobal             = "service.cilium.io/global"
	AnnotationSyncEndpointSlices = "service.cilium.io/global-sync-endpoint-slices"
	AnnotationAffinity           = "service.cilium.io/affinity"
	// DerivedPrefix starts the name of every derived Service.
	DerivedPrefix = "derived-"
	// ServiceCIDRName is the ServiceCIDR the controller creates for
	// Config.ClusterSetIPRange.
	ServiceCIDRName = "clustermesh-clusterset"
	// DefaultLeaseName is the Lease the controllers of a cluster share.
	DefaultLeaseName = "clustermesh-mcs"
)

// Errors of the package.
var (
	// ErrInvalidConfig: a Config that cannot run (Validate says why).
	ErrInvalidConfig = errors.New("invalid MCS controller config")
	// ErrRangeExhausted: no free ClusterSetIP is left in the range.
	ErrRangeExhausted = errors.New("ClusterSetIP range exhausted")
)
