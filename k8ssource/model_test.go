package k8ssource

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/statesource"
)

// fromScratch is the State of the cluster's objects derived whole, as the
// source did before it kept a model: the reference the model must equal.
func fromScratch(t *testing.T, cs kubernetes.Interface) *statesource.State {
	t.Helper()
	ctx := context.Background()
	l := &listers{log: slog.New(slog.NewTextHandler(io.Discard, nil)), warnings: map[string]bool{}}
	nodes, err1 := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	nss, err2 := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	all, err3 := cs.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	pods, err4 := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	svcs, err5 := cs.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	for _, err := range []error{err1, err2, err3, err4, err5} {
		if err != nil {
			t.Fatal(err)
		}
	}
	st := &statesource.State{}
	slices.SortFunc(nodes.Items, func(a, b corev1.Node) int { return strings.Compare(a.Name, b.Name) })
	known, zones := map[string]bool{}, map[string]string{}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		if sn, ok := l.node(n); ok && (&statesource.State{Nodes: []statesource.Node{sn}}).Validate() == nil {
			st.Nodes = append(st.Nodes, sn)
			known[n.Name], zones[n.Name] = true, n.Labels[corev1.LabelTopologyZone]
		}
	}
	nsLabels := map[string]map[string]string{}
	for _, ns := range nss.Items {
		nsLabels[ns.Name] = ns.Labels
	}
	slices.SortFunc(all.Items, func(a, b discoveryv1.EndpointSlice) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	parts := map[string][]condition{}
	for i := range all.Items {
		for pod, c := range sliceParts(&all.Items[i]) {
			parts[pod] = append(parts[pod], c)
		}
	}
	slices.SortFunc(pods.Items, func(a, b corev1.Pod) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	ips := map[netip.Addr]bool{}
	for i := range pods.Items {
		p := &pods.Items[i]
		key := p.Namespace + "/" + p.Name
		_, listed := parts[key]
		e, ok := l.endpoint(p, known, nsLabels[p.Namespace], foldParts(parts[key]), listed)
		if !ok {
			continue
		}
		e.Zone = cmp.Or(e.Zone, zones[e.Node])
		if statesource.CheckEndpoint(&e, known) != nil || ips[e.IP] {
			continue
		}
		ips[e.IP] = true
		st.Endpoints = append(st.Endpoints, &e)
	}
	slices.SortFunc(svcs.Items, func(a, b corev1.Service) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	for i := range svcs.Items {
		s := &svcs.Items[i]
		if s.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		var own []*discoveryv1.EndpointSlice
		for j := range all.Items {
			sl := &all.Items[j]
			if sl.Namespace == s.Namespace && sl.Labels[discoveryv1.LabelServiceName] == s.Name && sl.Labels[discoveryv1.LabelManagedBy] != "slices.clustermesh.io" {
				own = append(own, sl)
			}
		}
		svc := l.service(s, own)
		if (&statesource.State{Services: []statesource.Service{svc}}).Validate() == nil {
			st.Services = append(st.Services, svc)
		}
	}
	return st
}

// world makes random changes to a small cluster, often enough that pods
// share addresses, slices disagree, nodes come and go and services name
// ports the slices resolve.
type world struct {
	rng *rand.Rand
	cs  *fake.Clientset
}

func (w *world) pick(n int) int { return w.rng.IntN(n) }

func (w *world) oneOf(s ...string) string { return s[w.pick(len(s))] }

// step makes one random change.
func (w *world) step(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	ns := w.oneOf("a", "b")
	var err error
	switch op := w.pick(12); {
	case op < 5:
		err = w.upsertPod(ctx, ns)
	case op == 5:
		err = w.cs.CoreV1().Pods(ns).Delete(ctx, fmt.Sprint("p", w.pick(12)), metav1.DeleteOptions{})
	case op < 8:
		err = w.upsertSlice(ctx, ns)
	case op == 8:
		err = w.cs.DiscoveryV1().EndpointSlices(ns).Delete(ctx, fmt.Sprint("s", w.pick(4)), metav1.DeleteOptions{})
	case op == 9:
		err = w.upsertService(ctx, ns)
	case op == 10:
		err = w.upsertNode(ctx)
	default:
		err = upsert(ctx, w.cs.CoreV1().Namespaces(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{"team": w.oneOf("x", "y")}}})
	}
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

func (w *world) upsertPod(ctx context.Context, ns string) error {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprint("p", w.pick(12)), Labels: map[string]string{"app": w.oneOf("x", "y")}},
		Spec:       corev1.PodSpec{NodeName: fmt.Sprint("n", w.pick(5)), HostNetwork: w.pick(10) == 0, ServiceAccountName: w.oneOf("", "sa")},
		Status: corev1.PodStatus{Phase: corev1.PodPhase(w.oneOf("Running", "Running", "Running", "Succeeded")),
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionStatus(w.oneOf("True", "False"))}}},
	}
	if ip := w.oneOf("", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "fd00::1"); ip != "" {
		p.Status.PodIP, p.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
	}
	return upsert(ctx, w.cs.CoreV1().Pods(ns), p)
}

func (w *world) upsertSlice(ctx context.Context, ns string) error {
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprint("s", w.pick(4)),
		Labels: map[string]string{discoveryv1.LabelServiceName: fmt.Sprint("svc", w.pick(3))}}, AddressType: discoveryv1.AddressTypeIPv4}
	if w.pick(6) == 0 {
		s.Labels[discoveryv1.LabelManagedBy] = "slices.clustermesh.io"
	}
	if w.pick(2) == 0 {
		s.Ports = []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8000 + w.pick(3)))}}
	}
	for range w.pick(4) {
		b := func() *bool { v := w.pick(3) != 0; return &v }
		e := discoveryv1.Endpoint{Addresses: []string{"10.0.0.1"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: fmt.Sprint("p", w.pick(12))},
			Conditions: discoveryv1.EndpointConditions{Ready: b(), Serving: b(), Terminating: b()}}
		if w.pick(2) == 0 {
			e.Zone = ptr(w.oneOf("", "z1", "z2"))
		}
		if w.pick(3) == 0 {
			e.Hostname = ptr(w.oneOf("h1", "h2"))
		}
		if w.pick(3) == 0 {
			e.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: w.oneOf("z1", "z2")}}}
		}
		s.Endpoints = append(s.Endpoints, e)
	}
	return upsert(ctx, w.cs.DiscoveryV1().EndpointSlices(ns), s)
}

func (w *world) upsertService(ctx context.Context, ns string) error {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprint("svc", w.pick(3)),
		Annotations: map[string]string{"service.cilium.io/global": w.oneOf("true", "false")}},
		Spec: corev1.ServiceSpec{ClusterIP: fmt.Sprint("10.96.0.", 1+w.pick(9)), Selector: map[string]string{"app": w.oneOf("x", "y")},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}}}
	switch w.pick(4) {
	case 0:
		s.Spec.Ports[0].TargetPort = intstr.FromInt32(8080)
	case 1:
		s.Spec.Type, s.Spec.ExternalName, s.Spec.ClusterIP = corev1.ServiceTypeExternalName, "example.org", ""
	}
	return upsert(ctx, w.cs.CoreV1().Services(ns), s)
}

func (w *world) upsertNode(ctx context.Context) error {
	name := fmt.Sprint("n", w.pick(5))
	if w.pick(4) == 0 {
		return w.cs.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	}
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelTopologyZone: w.oneOf("z1", "z2")}}}
	if w.pick(5) != 0 {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprint("192.168.0.", 1+w.pick(9))}}
	}
	return upsert(ctx, w.cs.CoreV1().Nodes(), n)
}

// upsert creates obj, or updates it when it exists.
func upsert[T any](ctx context.Context, c interface {
	Create(context.Context, T, metav1.CreateOptions) (T, error)
	Update(context.Context, T, metav1.UpdateOptions) (T, error)
}, obj T) error {
	_, err := c.Create(ctx, obj, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = c.Update(ctx, obj, metav1.UpdateOptions{})
	}
	return err
}

// states keeps every State a source delivers.
type states struct {
	mu  sync.Mutex
	all []*statesource.State
}

func (s *states) add(st *statesource.State) { s.mu.Lock(); s.all = append(s.all, st); s.mu.Unlock() }

func (s *states) list() []*statesource.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.all)
}

// The model follows random changes of a cluster's objects: after each
// burst the State it delivered last is the one derived whole from the
// objects, and every State's Changes say exactly how it differs from the
// one before (the endpoints added or changed, as the State's own, those
// removed, and whether nodes or services changed).
func TestModelEqualsFromScratch(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			w := &world{rng: rand.New(rand.NewPCG(seed, 11)), cs: fake.NewClientset()}
			for range 30 {
				w.step(t)
			}
			rec := &states{}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- (&Source{Client: w.cs, Coalesce: time.Millisecond}).Run(ctx, rec.add) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Error(err)
				}
			}()
			for round := range 40 {
				if round > 0 {
					for range 1 + w.pick(4) {
						w.step(t)
					}
				}
				want := fromScratch(t, w.cs)
				testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("round %d: the model's State equals the one derived whole", round), func() bool {
					all := rec.list()
					return len(all) > 0 && sameState(all[len(all)-1], want)
				})
			}
			checkChanges(t, rec.list())
		})
	}
}

// sameState compares two States but their Changes.
func sameState(a, b *statesource.State) bool {
	ca, cb := *a, *b
	ca.Changes, cb.Changes = nil, nil
	return reflect.DeepEqual(&ca, &cb)
}

// checkChanges checks each State's Changes against the State before it.
func checkChanges(t *testing.T, all []*statesource.State) {
	t.Helper()
	if len(all) < 2 || all[0].Changes != nil {
		t.Fatalf("%d States, the first with Changes %+v", len(all), all[0].Changes)
	}
	for i := 1; i < len(all); i++ {
		prev, next, ch := all[i-1], all[i], all[i].Changes
		if ch == nil {
			t.Fatalf("State %d has no Changes", i)
		}
		was := map[string]*statesource.Endpoint{}
		for _, e := range prev.Endpoints {
			was[e.Key()] = e
		}
		var changed, removed []string
		for _, e := range next.Endpoints {
			if old, ok := was[e.Key()]; !ok || !reflect.DeepEqual(*old, *e) {
				changed = append(changed, e.Key())
			} else if old != e {
				t.Errorf("State %d: unchanged endpoint %s not shared with the State before", i, e.Key())
			}
			delete(was, e.Key())
		}
		for k := range was {
			removed = append(removed, k)
		}
		slices.Sort(removed)
		var named []string
		for _, e := range ch.Endpoints {
			if !slices.Contains(next.Endpoints, e) {
				t.Errorf("State %d: changed endpoint %s is not the State's own", i, e.Key())
			}
			named = append(named, e.Key())
		}
		slices.SortFunc(named, comparePodKeys)
		slices.SortFunc(changed, comparePodKeys)
		if !slices.Equal(named, changed) || !slices.Equal(ch.RemovedEndpoints, removed) {
			t.Errorf("State %d: Changes name %v, removed %v; the States differ in %v, removed %v", i, named, ch.RemovedEndpoints, changed, removed)
		}
		if !reflect.DeepEqual(prev.Nodes, next.Nodes) && !ch.Nodes {
			t.Errorf("State %d: nodes changed, Changes say not", i)
		}
		if !reflect.DeepEqual(prev.Services, next.Services) && !ch.Services {
			t.Errorf("State %d: services changed, Changes say not", i)
		}
	}
}
