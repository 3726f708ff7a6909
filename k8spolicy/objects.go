package k8spolicy

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"

	"github.com/clustermesh/clustermesh/policy"
)

// ObjectRef names one policy object.
type ObjectRef struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

func (r ObjectRef) String() string { return r.Kind + " " + r.Namespace + "/" + r.Name }

func compareRefs(a, b ObjectRef) int {
	return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// object is what the watcher keeps of one policy object.
type object struct {
	resourceVersion string           // of the version last compiled
	valid           *policy.Compiled // its last valid version; nil if none ever was
	err             error            // why the current version is not the enforced one
	errSince        time.Time
}

// store holds the compiled policy objects; the informers' handlers write
// it, Run's loop reads it. Safe for concurrent use.
type store struct {
	opts  policy.Options
	onErr func(ref ObjectRef, err error, keptPrevious bool) // logs and counts; called without mu

	mu      sync.Mutex
	objects map[ObjectRef]*object
	// changed: the set of valid versions changed since the last merge.
	changed bool
	// invalidTotal counts invalid object versions by kind.
	invalidTotal map[string]uint64
	dirty        chan struct{} // capacity 1: poked on every change
}

func newStore(opts policy.Options, onErr func(ObjectRef, error, bool)) *store {
	return &store{opts: opts, onErr: onErr, objects: map[ObjectRef]*object{}, invalidTotal: map[string]uint64{},
		dirty: make(chan struct{}, 1)}
}

func (s *store) poke() {
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

// refAndDocument names an informer's object and builds its document.
func refAndDocument(obj any) (ObjectRef, string, []byte, error) {
	switch o := obj.(type) {
	case *networkingv1.NetworkPolicy:
		ref := ObjectRef{KindNetworkPolicy, o.Namespace, o.Name}
		doc, err := NetworkPolicyDocument(o)
		return ref, o.ResourceVersion, doc, err
	case *unstructured.Unstructured:
		ref := ObjectRef{KindCiliumNetworkPolicy, o.GetNamespace(), o.GetName()}
		doc, err := Document(KindCiliumNetworkPolicy, o.Object)
		return ref, o.GetResourceVersion(), doc, err
	default:
		return ObjectRef{}, "", nil, fmt.Errorf("reading a policy object: unexpected type %T", obj)
	}
}

// upsert compiles a new or updated object alone. A valid version replaces
// the object's rules; an invalid one is reported and the last valid
// version stays (a new object never valid contributes nothing). A version
// already compiled (a relist) is not compiled again.
func (s *store) upsert(obj any) {
	ref, rv, doc, err := refAndDocument(obj)
	if ref == (ObjectRef{}) {
		return
	}
	s.mu.Lock()
	o := s.objects[ref]
	if o != nil && rv != "" && o.resourceVersion == rv {
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()

	var c *policy.Compiled
	if err == nil {
		c, err = policy.Parse(s.opts, "kubernetes "+ref.Kind+" "+ref.Namespace+"/"+ref.Name, doc)
	} else {
		err = fmt.Errorf("reading kubernetes %s: %w", ref, err)
	}

	s.mu.Lock()
	if o = s.objects[ref]; o == nil {
		o = &object{}
		s.objects[ref] = o
	}
	o.resourceVersion = rv
	kept := o.valid != nil
	if err == nil {
		o.valid, o.err, o.errSince = c, nil, time.Time{}
		s.changed = true
	} else {
		if o.err == nil {
			o.errSince = time.Now()
		}
		o.err = err
		s.invalidTotal[ref.Kind]++
	}
	s.mu.Unlock()
	if err != nil {
		s.onErr(ref, err, kept)
	}
	s.poke()
}

// remove forgets a deleted object and its rules.
func (s *store) remove(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	var ref ObjectRef
	switch o := obj.(type) {
	case *networkingv1.NetworkPolicy:
		ref = ObjectRef{KindNetworkPolicy, o.Namespace, o.Name}
	case *unstructured.Unstructured:
		ref = ObjectRef{KindCiliumNetworkPolicy, o.GetNamespace(), o.GetName()}
	default:
		return
	}
	s.mu.Lock()
	if o := s.objects[ref]; o != nil {
		delete(s.objects, ref)
		s.changed = s.changed || o.valid != nil
	}
	s.mu.Unlock()
	s.poke()
}

// removeKind forgets every object of kind (its resource is no longer
// served).
func (s *store) removeKind(kind string) {
	s.mu.Lock()
	for ref, o := range s.objects {
		if ref.Kind == kind {
			delete(s.objects, ref)
			s.changed = s.changed || o.valid != nil
		}
	}
	s.mu.Unlock()
	s.poke()
}

// merged returns every object's last valid version merged (in a stable
// order), and whether that set changed since the last call.
func (s *store) merged() (*policy.Compiled, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	refs := make([]ObjectRef, 0, len(s.objects))
	for ref, o := range s.objects {
		if o.valid != nil {
			refs = append(refs, ref)
		}
	}
	slices.SortFunc(refs, compareRefs)
	out := &policy.Compiled{}
	for _, ref := range refs {
		out.Merge(s.objects[ref].valid)
	}
	changed := s.changed
	s.changed = false
	return out, changed
}

// handler feeds an informer's events into the store.
func (s *store) handler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.upsert(obj) },
		UpdateFunc: func(_, obj any) { s.upsert(obj) },
		DeleteFunc: s.remove,
	}
}

// dropManagedFields keeps the informers' caches small: the managed fields
// and kubectl's copy of the last applied object are often the bulk of one,
// and nothing here reads them.
func dropManagedFields(obj any) (any, error) {
	if a, err := meta.Accessor(obj); err == nil {
		a.SetManagedFields(nil)
		if ann := a.GetAnnotations(); ann[lastApplied] != "" {
			delete(ann, lastApplied) // a freshly decoded object: ours to change
			a.SetAnnotations(ann)
		}
	}
	return obj, nil
}

const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"
