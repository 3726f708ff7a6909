package kubemesh

import (
	"context"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
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
	objs := []runtime.Object{
		deploymentObject(c, ""), serviceObject(c), meshConfigObject(c),
		configMapObject(IdentitiesConfigMap, ns), configMapObject(TrustedCAsName, ns),
		tlsSecret(ServerSecretName, ns, nil, nil, nil), tlsSecret(AdminSecretName, ns, nil, nil, nil),
		tlsSecret(RemoteSecretName, ns, nil, nil, nil), tlsSecret(RemotesSecretName, ns, nil, nil, nil),
		clusterRoleBindingObject(c), clusterRoleObject(c), roleBindingObject(c), roleObject(c), serviceAccountObject(c),
	}
	if o.DeleteCA {
		objs = append(objs, caSecretObject(ns, nil, nil))
	}
	for _, obj := range objs {
		ch, err := a.remove(ctx, obj)
		if err != nil {
			return res, fmt.Errorf("context %s: %w", t.Context, err)
		}
		res.Objects = append(res.Objects, ch)
	}
	return res, nil
}
