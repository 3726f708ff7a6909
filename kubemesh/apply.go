package kubemesh

import (
	"context"
	"fmt"
	"io"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"
)

// Action is what an operation did to an object.
type Action string

const (
	Created    Action = "created"
	Configured Action = "configured" // applied, and the API server changed it
	Unchanged  Action = "unchanged"  // applied, and it was as asked already
	Deleted    Action = "deleted"
	NotFound   Action = "not found" // to delete, and not there
)

// ObjectChange is an object an operation applied, wrote or deleted.
type ObjectChange struct {
	// Cluster is the cluster's mesh name in the steps of Connect and
	// Disconnect, which change several clusters; empty in Enable and
	// Disable, whose result names their context.
	Cluster   string
	Kind      string // lower case, as kubectl names it: "secret"
	Namespace string // empty for an object of the cluster's scope
	Name      string
	Action    Action
}

// applier writes objects with server-side apply (field manager
// "clustermesh"), so that a run that changes nothing writes nothing: the API
// server does not bump an object an apply leaves as it was.
type applier struct {
	dyn     dynamic.Interface
	cluster string // of every change
}

func newApplier(t *Target, cluster string) (*applier, error) {
	dyn, err := dynamic.NewForConfig(t.Config)
	if err != nil {
		return nil, fmt.Errorf("context %s: building the dynamic client: %w", t.Context, err)
	}
	return &applier{dyn: dyn, cluster: cluster}, nil
}

// resource returns obj's API resource and the change an operation on it
// makes (Action to be set).
func (a *applier) resource(obj runtime.Object) (dynamic.ResourceInterface, ObjectChange, error) {
	gvr, namespaced, err := resourceOf(obj)
	if err != nil {
		return nil, ObjectChange{}, err
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, ObjectChange{}, fmt.Errorf("%T has no object metadata", obj)
	}
	c := ObjectChange{Cluster: a.cluster, Kind: strings.ToLower(obj.GetObjectKind().GroupVersionKind().Kind), Name: m.GetName()}
	if namespaced {
		c.Namespace = m.GetNamespace()
		return a.dyn.Resource(gvr).Namespace(c.Namespace), c, nil
	}
	return a.dyn.Resource(gvr), c, nil
}

// apply applies obj and says whether it was created, configured or
// unchanged.
func (a *applier) apply(ctx context.Context, obj runtime.Object) (ObjectChange, error) {
	return a.applyAs(ctx, obj, fieldManager)
}

// applyAs applies obj with another field manager: the fields of obj become
// that manager's, and those it does not mention stay with their owners.
func (a *applier) applyAs(ctx context.Context, obj runtime.Object, manager string) (ObjectChange, error) {
	res, c, err := a.resource(obj)
	if err != nil {
		return c, err
	}
	before := ""
	if cur, err := res.Get(ctx, c.Name, metav1.GetOptions{}); err == nil {
		before = cur.GetResourceVersion()
	} else if !apierrors.IsNotFound(err) {
		return c, fmt.Errorf("reading %s/%s: %w", c.Kind, c.Name, err)
	}
	u, err := toUnstructured(obj)
	if err != nil {
		return c, err
	}
	got, err := res.Apply(ctx, c.Name, &unstructured.Unstructured{Object: u}, metav1.ApplyOptions{FieldManager: manager, Force: true})
	if err != nil {
		return c, fmt.Errorf("applying %s/%s: %w", c.Kind, c.Name, err)
	}
	c.Action = Configured
	switch {
	case before == "":
		c.Action = Created
	case got.GetResourceVersion() == before:
		c.Action = Unchanged
	}
	return c, nil
}

// remove deletes obj, if it exists.
func (a *applier) remove(ctx context.Context, obj runtime.Object) (ObjectChange, error) {
	res, c, err := a.resource(obj)
	if err != nil {
		return c, err
	}
	policy := metav1.DeletePropagationBackground
	err = res.Delete(ctx, c.Name, metav1.DeleteOptions{PropagationPolicy: &policy})
	switch {
	case apierrors.IsNotFound(err):
		c.Action = NotFound
	case err != nil:
		return c, fmt.Errorf("deleting %s/%s: %w", c.Kind, c.Name, err)
	default:
		c.Action = Deleted
	}
	return c, nil
}

// WriteYAML writes objects as one YAML stream. With redact, the private
// keys of secrets (data keys ending in .key) are replaced by a note: the
// output shows what would be written without handing out key material.
func WriteYAML(w io.Writer, redact bool, objs ...runtime.Object) error {
	for _, obj := range objs {
		if s, ok := obj.(*corev1.Secret); ok && redact {
			obj = redacted(s)
		}
		u, err := toUnstructured(obj)
		if err != nil {
			return err
		}
		b, err := yaml.Marshal(u)
		if err != nil {
			return fmt.Errorf("encoding %T as YAML: %w", obj, err)
		}
		if _, err := fmt.Fprintf(w, "---\n%s", b); err != nil {
			return err
		}
	}
	return nil
}

// redacted is s with its private keys replaced by a note, as stringData.
func redacted(s *corev1.Secret) *corev1.Secret {
	c := s.DeepCopy()
	c.StringData = map[string]string{}
	for k, v := range c.Data {
		if strings.HasSuffix(k, ".key") {
			c.StringData[k] = "<private key, not shown>"
		} else {
			c.StringData[k] = string(v)
		}
	}
	c.Data = nil
	return c
}

// toUnstructured converts a typed object without the empty fields its Go
// type always carries (creation timestamps, status), which are neither ours
// to apply nor worth printing.
func toUnstructured(obj runtime.Object) (map[string]any, error) {
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("converting %T: %w", obj, err)
	}
	unstructured.RemoveNestedField(u, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u, "spec", "template", "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u, "status")
	return u, nil
}
