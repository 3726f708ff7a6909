package kubemesh

import (
	"context"
	"fmt"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DisableOptions say which cluster's mesh apiserver Disable removes.
type DisableOptions struct {
	Kubeconfig string
	Context    string // the cluster's kubeconfig context ("": the current one)
	Namespace  string // of the mesh apiserver (default DefaultNamespace)
	// DeleteCA deletes the mesh CA secret too, which the other clusters of
	// the mesh share (they keep their copies).
	DeleteCA bool
	// Force disables a cluster still connected to peers, which would keep
	// dialing it.
	Force bool
}

// DisableResult is what Disable did.
type DisableResult struct {
	Context string
	// Objects are the objects deleted, or not found, in order.
	Objects []ObjectChange
}

// Disable removes what Enable created and what Connect and the apiserver
// wrote, but for the namespace and (unless DeleteCA) the mesh CA. A
// cluster still connected to peers is refused unless Force.
func Disable(ctx context.Context, o DisableOptions) (DisableResult, error) {
	ns := orDefault(o.Namespace, DefaultNamespace)
	t, err := Open(o.Kubeconfig, o.Context)
	if err != nil {
		return DisableResult{}, err
	}
	res := DisableResult{Context: t.Context}
	if cm, err := t.Client.CoreV1().ConfigMaps(ns).Get(ctx, MeshConfigName, metav1.GetOptions{}); err == nil {
		if peers := splitList(cm.Data[cfgPeers]); len(peers) > 0 && !o.Force {
			return res, fmt.Errorf("context %s: cluster %s is connected to %s: run clustermesh disconnect first, or pass --force",
				t.Context, cm.Data[cfgClusterName], strings.Join(peers, ", "))
		}
	} else if !apierrors.IsNotFound(err) {
		return res, fmt.Errorf("context %s: reading configmap %s/%s: %w", t.Context, ns, MeshConfigName, err)
	}
	a, err := newApplier(t, "")
	if err != nil {
		return res, err
	}
	c := meshCluster{Namespace: ns}
	// The slices writer first (Enable's EndpointSlices), newest object
	// first, so that it stops before its slices go.
	writer := slicesWriterObjects(c, "")
	slices.Reverse(writer)
	objs := append(writer,
		deploymentObject(c, ""), serviceObject(c), meshConfigObject(c),
		configMapObject(IdentitiesConfigMap, ns), configMapObject(TrustedCAsName, ns),
		tlsSecret(ServerSecretName, ns, nil, nil, nil), tlsSecret(AdminSecretName, ns, nil, nil, nil),
		tlsSecret(RemoteSecretName, ns, nil, nil, nil), tlsSecret(RemotesSecretName, ns, nil, nil, nil),
		clusterRoleBindingObject(c), clusterRoleObject(c), roleBindingObject(c), roleObject(c), serviceAccountObject(c),
	)
	if o.DeleteCA {
		objs = append(objs, caSecretObject(ns, nil, nil))
	}
	for _, obj := range objs {
		ch, err := a.remove(ctx, obj)
		if err != nil {
			return res, fmt.Errorf("context %s: %w", t.Context, err)
		}
		res.Objects = append(res.Objects, ch)
		if ch.Kind == "deployment" && ch.Name == SlicesName {
			if err := res.deleteWrittenSlices(ctx, t); err != nil {
				return res, err
			}
		}
	}
	return res, nil
}

// deleteWrittenSlices deletes every EndpointSlice the slices writer wrote
// (of remote backends, which nothing updates once it is gone), recording
// each. A writer pod still terminating may write one again: disable again.
func (res *DisableResult) deleteWrittenSlices(ctx context.Context, t *Target) error {
	l, err := t.Client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{LabelSelector: ownSlices})
	if err != nil {
		return fmt.Errorf("context %s: listing the EndpointSlices of remote backends: %w", t.Context, err)
	}
	for _, s := range l.Items {
		err := t.Client.DiscoveryV1().EndpointSlices(s.Namespace).Delete(ctx, s.Name,
			metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &s.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("context %s: deleting EndpointSlice %s/%s of remote backends: %w", t.Context, s.Namespace, s.Name, err)
		}
		res.Objects = append(res.Objects, ObjectChange{Kind: "endpointslice", Namespace: s.Namespace, Name: s.Name, Action: Deleted})
	}
	return nil
}
