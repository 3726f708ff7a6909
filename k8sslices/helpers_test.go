package k8sslices_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/k8sslices"
	"github.com/clustermesh/clustermesh/merge"
)

// source is a k8sslices.Source the tests set, telling its writers.
type source struct {
	mu      sync.Mutex
	svcs    map[merge.ServiceName][]merge.RemoteBackends
	writers []*k8sslices.Writer
}

func newSource() *source { return &source{svcs: map[merge.ServiceName][]merge.RemoteBackends{}} }

func (s *source) RemoteBackends(n merge.ServiceName) []merge.RemoteBackends {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.svcs[n])
}

// set replaces what cluster offers for namespace/name: addresses on one TCP
// port named "http" (no address: the cluster offers nothing).
func (s *source) set(namespace, name, cluster string, port uint16, addrs ...string) {
	s.mu.Lock()
	n := merge.ServiceName{Namespace: namespace, Name: name}
	rbs := slices.DeleteFunc(s.svcs[n], func(rb merge.RemoteBackends) bool { return rb.Cluster == cluster })
	if len(addrs) > 0 {
		rb := merge.RemoteBackends{Cluster: cluster, Ports: map[string][]datapath.Backend{}}
		for _, a := range addrs {
			rb.Ports["http"] = append(rb.Ports["http"], datapath.Backend{Addr: netip.MustParseAddr(a), Port: port, Protocol: datapath.TCP})
		}
		rbs = append(rbs, rb)
	}
	s.svcs[n] = rbs
	ws := slices.Clone(s.writers)
	s.mu.Unlock()
	for _, w := range ws {
		w.Notify(n)
	}
}

// run starts a writer on src and stops it (waiting for Run) when t ends or
// when the returned function is called.
func run(t *testing.T, client kubernetes.Interface, src *source, identity string, mod func(*k8sslices.Config)) (*k8sslices.Writer, func()) {
	t.Helper()
	cfg := k8sslices.Config{Client: client, Source: src, LeaseNamespace: "default", Identity: identity,
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 100 * time.Millisecond,
		Coalesce: 20 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	w, err := k8sslices.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	src.mu.Lock()
	src.writers = append(src.writers, w)
	src.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("writer %s: Run: %v", identity, err)
			}
		})
	}
	t.Cleanup(stop)
	return w, stop
}

// createService creates a headless or ClusterIP service with annotations.
func createService(t *testing.T, client kubernetes.Interface, name string, ann map[string]string) *corev1.Service {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Annotations: ann},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
	got, err := client.CoreV1().Services("default").Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func globalSync() map[string]string {
	return map[string]string{k8sslices.AnnotationGlobal: "true", k8sslices.AnnotationSyncEndpointSlices: "true"}
}

// owned lists the slices of service name managed by the writer.
func owned(t testing.TB, client kubernetes.Interface, name string) []discoveryv1.EndpointSlice {
	t.Helper()
	l, err := client.DiscoveryV1().EndpointSlices("default").List(context.Background(), metav1.ListOptions{
		LabelSelector: fmt.Sprintf("%s=%s,%s=%s", discoveryv1.LabelManagedBy, k8sslices.ManagedBy, discoveryv1.LabelServiceName, name)})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// addresses is every endpoint address of slices from cluster, sorted.
func addresses(ss []discoveryv1.EndpointSlice, cluster string) []string {
	var out []string
	for _, s := range ss {
		if s.Labels[k8sslices.LabelSourceCluster] != cluster {
			continue
		}
		for _, e := range s.Endpoints {
			out = append(out, e.Addresses...)
		}
	}
	slices.Sort(out)
	return out
}

// setTopology sets the topology cluster publishes for the backends of
// namespace/name it offers (set first); nil: none, as an older apiserver.
func (s *source) setTopology(namespace, name, cluster string, top map[netip.Addr]merge.BackendTopology) {
	s.mu.Lock()
	n := merge.ServiceName{Namespace: namespace, Name: name}
	for i := range s.svcs[n] {
		if s.svcs[n][i].Cluster == cluster {
			s.svcs[n][i].Topology = top
		}
	}
	ws := slices.Clone(s.writers)
	s.mu.Unlock()
	for _, w := range ws {
		w.Notify(n)
	}
}
