package k8ssource

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/clustermesh/clustermesh/internal/figure"
)

// BenchmarkPodChange: one pod relabelled in a cluster of 200 pods or of
// 100,000 (500 nodes, 1,000 services with a slice each: the scale rig's big
// cluster), from the informer's event to the next State: the model reads
// the pod again and derives what it touches; whole: deriving the whole
// State again (what the source did before the model).
func BenchmarkPodChange(b *testing.B) {
	for _, n := range []int{200, 100000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) { benchPodChange(b, n) })
	}
	b.Run("100000/whole", func(b *testing.B) { benchWhole(b, 100000) })
}

// benchWhole derives the whole State of a cluster of n pods.
func benchWhole(b *testing.B, n int) {
	l := benchCluster(b, n)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m := newModel(l)
		if m.apply(m.everything()) == nil {
			b.Fatal("no State")
		}
	}
}

// TestFiguresPodChange prints BenchmarkPodChange's figures: one pod's
// change at 200 and at 100,000 pods, and the whole State derived at
// 100,000 (what every change cost before the model). What grows with the
// cluster is the copy of the endpoint list a new State gets (a delivered
// State is never modified): 0.8 MB of pointers at 100,000.
func TestFiguresPodChange(t *testing.T) {
	figure.Require(t)
	small := testing.Benchmark(func(b *testing.B) { benchPodChange(b, 200) })
	big := testing.Benchmark(func(b *testing.B) { benchPodChange(b, 100000) })
	whole := testing.Benchmark(func(b *testing.B) { benchWhole(b, 100000) })
	figure.Print("k8ssource.pod_change_200_us", float64(small.NsPerOp())/1e3, "us")
	figure.Print("k8ssource.pod_change_100k_us", float64(big.NsPerOp())/1e3, "us")
	figure.Print("k8ssource.whole_state_100k_ms", float64(whole.NsPerOp())/1e6, "ms")
}

func benchPodChange(b *testing.B, pods int) {
	l := benchCluster(b, pods)
	m := newModel(l)
	if m.apply(m.everything()) == nil {
		b.Fatal("no State")
	}
	store := l.pods.Informer().GetIndexer()
	obj, _, _ := store.GetByKey("bulk/pod-7")
	pod := obj.(*corev1.Pod)
	versions := [2]*corev1.Pod{pod.DeepCopy(), pod.DeepCopy()}
	versions[0].Labels = map[string]string{"app": "app-7", "tier": "b"}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := store.Update(versions[i%2]); err != nil {
			b.Fatal(err)
		}
		ev := newEvents()
		ev.pods["bulk/pod-7"] = true
		if st := m.apply(ev); st == nil || len(st.Changes.Endpoints) != 1 {
			b.Fatal("the change was not delivered as one endpoint's")
		}
	}
}

// benchCluster fills informer caches (not started: the objects are added
// to their stores) with a cluster of n pods on n/200 nodes, 10 pods per
// app, one service per 100 pods with one EndpointSlice.
func benchCluster(b *testing.B, n int) *listers {
	b.Helper()
	factory := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	l := newListers(factory, slog.New(slog.NewTextHandler(io.Discard, nil)), 0)
	add := func(store interface{ Add(any) error }, obj any) {
		if err := store.Add(obj); err != nil {
			b.Fatal(err)
		}
	}
	for i := range max(n/200, 2) {
		add(l.nodes.Informer().GetIndexer(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprint("node-", i)},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP,
				Address: netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)}).String()}}}})
	}
	add(l.ns.Informer().GetIndexer(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bulk", Labels: map[string]string{"team": "x"}}})
	ready := corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue}
	for i := range n {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String()
		add(l.pods.Informer().GetIndexer(), &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bulk", Name: fmt.Sprint("pod-", i), Labels: map[string]string{"app": fmt.Sprint("app-", i/10)}},
			Spec:       corev1.PodSpec{NodeName: fmt.Sprint("node-", i%max(n/200, 2))},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, Conditions: []corev1.PodCondition{ready}},
		})
	}
	for s := range n / 100 {
		name := fmt.Sprint("svc-", s)
		add(l.services.Informer().GetIndexer(), &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "bulk", Name: name,
			Annotations: map[string]string{"service.cilium.io/global": "true"}},
			Spec: corev1.ServiceSpec{ClusterIP: netip.AddrFrom4([4]byte{10, 200, byte(s >> 8), byte(s)}).String(),
				Selector: map[string]string{"app": fmt.Sprint("app-", s*10)}, Ports: []corev1.ServicePort{{Port: 80}}}})
		slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "bulk", Name: name + "-x",
			Labels: map[string]string{discoveryv1.LabelServiceName: name}}, AddressType: discoveryv1.AddressTypeIPv4}
		for p := s * 100; p < s*100+10; p++ {
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.0.0.1"},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "bulk", Name: fmt.Sprint("pod-", p)}})
		}
		add(l.slices.Informer().GetIndexer(), slice)
	}
	return l
}
