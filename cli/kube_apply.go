package cli

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

// applier writes objects with server-side apply (field manager
// "clustermesh"), so that a run that changes nothing writes nothing: the API
// server does not bump an object an apply leaves as it was.
type applier struct {
	dyn    dynamic.Interface
	out    io.Writer
	prefix string // of every line printed
}

func newApplier(t *kubeTarget, out io.Writer) (*applier, error) {
	dyn, err := dynamic.NewForConfig(t.Config)
	if err != nil {
		return nil, err
	}
	return &applier{dyn: dyn, out: out}, nil
}

func (a *applier) resource(obj runtime.Object) (dynamic.ResourceInterface, metav1.Object, error) {
	gvr, namespaced, err := resourceOf(obj)
	if err != nil {
		return nil, nil, err
	}
	m, err := metaOf(obj)
	if err != nil {
		return nil, nil, err
	}
	if namespaced {
		return a.dyn.Resource(gvr).Namespace(m.GetNamespace()), m, nil
	}
	return a.dyn.Resource(gvr), m, nil
}

// apply applies obj and prints "kind/name created|configured|unchanged".
func (a *applier) apply(ctx context.Context, obj runtime.Object) error {
	return a.applyAs(ctx, obj, fieldManager)
}

// applyAs applies obj with another field manager: the fields of obj become
// that manager's, and those it does not mention stay with their owners.
func (a *applier) applyAs(ctx context.Context, obj runtime.Object, manager string) error {
	res, m, err := a.resource(obj)
	if err != nil {
		return err
	}
	kind := strings.ToLower(obj.GetObjectKind().GroupVersionKind().Kind)
	before := ""
	if cur, err := res.Get(ctx, m.GetName(), metav1.GetOptions{}); err == nil {
		before = cur.GetResourceVersion()
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("read %s/%s: %w", kind, m.GetName(), err)
	}
	u, err := toUnstructured(obj)
	if err != nil {
		return err
	}
	got, err := res.Apply(ctx, m.GetName(), &unstructured.Unstructured{Object: u}, metav1.ApplyOptions{FieldManager: manager, Force: true})
	if err != nil {
		return fmt.Errorf("apply %s/%s: %w", kind, m.GetName(), err)
	}
	what := "configured"
	switch {
	case before == "":
		what = "created"
	case got.GetResourceVersion() == before:
		what = "unchanged"
	}
	fmt.Fprintf(a.out, "%s%s/%s %s\n", a.prefix, kind, m.GetName(), what)
	return nil
}

// remove deletes obj, if it exists, and prints what it did.
func (a *applier) remove(ctx context.Context, obj runtime.Object) error {
	res, m, err := a.resource(obj)
	if err != nil {
		return err
	}
	kind := strings.ToLower(obj.GetObjectKind().GroupVersionKind().Kind)
	policy := metav1.DeletePropagationBackground
	err = res.Delete(ctx, m.GetName(), metav1.DeleteOptions{PropagationPolicy: &policy})
	switch {
	case apierrors.IsNotFound(err):
		fmt.Fprintf(a.out, "%s%s/%s not found\n", a.prefix, kind, m.GetName())
	case err != nil:
		return fmt.Errorf("delete %s/%s: %w", kind, m.GetName(), err)
	default:
		fmt.Fprintf(a.out, "%s%s/%s deleted\n", a.prefix, kind, m.GetName())
	}
	return nil
}

func metaOf(obj runtime.Object) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, fmt.Errorf("%T has no object metadata", obj)
	}
	return m, nil
}

// printYAML writes objects as one YAML stream. With redact, the private
// keys of secrets (data keys ending in .key) are replaced by a note: the
// output shows what would be written without handing out key material.
func printYAML(w io.Writer, redact bool, objs ...runtime.Object) error {
	for _, obj := range objs {
		if s, ok := obj.(*corev1.Secret); ok && redact {
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
			obj = c
		}
		u, err := toUnstructured(obj)
		if err != nil {
			return err
		}
		b, err := yaml.Marshal(u)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "---\n%s", b); err != nil {
			return err
		}
	}
	return nil
}

// toUnstructured converts a typed object without the empty fields its Go
// type always carries (creation timestamps, status), which are neither ours
// to apply nor worth printing.
func toUnstructured(obj runtime.Object) (map[string]any, error) {
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	unstructured.RemoveNestedField(u, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u, "spec", "template", "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u, "status")
	return u, nil
}
