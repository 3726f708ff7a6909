package k8ssource_test

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8ssource"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// Edge cases on a fake clientset: every object the State cannot carry is
// left out, and the State is still valid.
func TestSourceEdgeCases(t *testing.T) {
	now := metav1.Now()
	objs := []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a", Labels: map[string]string{"env": "prod"}}},
		// No InternalIP: the ExternalIP; a bad CIDR and a bad key are dropped.
		&corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "ext", Annotations: map[string]string{k8ssource.AnnotationWireguardPubKey: "not-a-key", wire.AnnotationHubbleAddress: "no-port"}},
			Spec:       corev1.NodeSpec{PodCIDR: "10.1.1.7/24"},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeHostName, Address: "ext.example"}, {Type: corev1.NodeExternalIP, Address: "203.0.113.9"},
			}},
		},
		// No address at all: left out, its pods keep no node.
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bare"}},
		&corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "dual", Annotations: map[string]string{
				wire.AnnotationHubbleAddress: "192.168.0.2:4245", "clustermesh.io/zone": "b", "node.alpha.kubernetes.io/ttl": "0",
			}},
			Spec: corev1.NodeSpec{PodCIDRs: []string{"10.2.0.0/24", "fd00:2::/64"}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: "192.168.0.2"}, {Type: corev1.NodeInternalIP, Address: "fd00::2"},
				{Type: corev1.NodeExternalIP, Address: "203.0.113.2"},
			}},
		},
		func() *corev1.Pod {
			p := pod("a", "on-bare", "bare", "10.0.0.1", corev1.PodRunning, nil)
			// Only Cilium sets its labels: a pod cannot claim a service account.
			p.Labels = map[string]string{"app": "x", k8ssource.ServiceAccountLabel: "admin"}
			return p
		}(),
		pod("a", "dup-1", "dual", "10.0.0.2", corev1.PodRunning, nil),
		pod("a", "dup-2", "dual", "10.0.0.2", corev1.PodRunning, nil),
		pod("a", "done", "dual", "10.0.0.3", corev1.PodSucceeded, nil),
		pod("a", "pending", "dual", "", corev1.PodPending, nil),
		pod("a", "terminating", "dual", "10.0.0.4", corev1.PodRunning, &now),
		func() *corev1.Pod {
			p := pod("a", "host", "dual", "192.168.0.2", corev1.PodRunning, nil)
			p.Spec.HostNetwork = true
			return p
		}(),
		func() *corev1.Pod {
			p := pod("a", "unready", "dual", "::ffff:10.0.0.5", corev1.PodRunning, nil)
			p.Status.Conditions[0].Status = corev1.ConditionFalse
			p.Spec.ServiceAccountName = "web"
			return p
		}(),
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "ext"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "x.example"}},
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "headless", Annotations: map[string]string{"clustermesh.io/min-local-backends": "2"}},
			Spec: corev1.ServiceSpec{ClusterIP: "None", Selector: map[string]string{"app": "x"},
				Ports: []corev1.ServicePort{{Name: "dns", Port: 53, TargetPort: intstr.FromString("dns"), Protocol: corev1.ProtocolUDP}}},
		},
	}
	r := run(t, &k8ssource.Source{Client: fake.NewClientset(objs...)})
	testenv.WaitFor(t, 10*time.Second, "the first State", func() bool { return r.count() > 0 })
	st := r.last()
	if err := st.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != 2 || st.Nodes[0].Name != "dual" || st.Nodes[1].Name != "ext" {
		t.Fatalf("nodes: %+v", st.Nodes)
	}
	if d := st.Nodes[0]; len(d.IPs) != 2 || d.IPs[1] != netip.MustParseAddr("fd00::2") || len(d.PodCIDRs) != 2 {
		t.Errorf("node dual: %+v", d)
	}
	if want := map[string]string{wire.AnnotationHubbleAddress: "192.168.0.2:4245", "clustermesh.io/zone": "b"}; !maps.Equal(st.Nodes[0].Annotations, want) {
		t.Errorf("node dual: annotations %v, want only those under clustermesh.io/: %v", st.Nodes[0].Annotations, want)
	}
	if e := st.Nodes[1]; len(e.IPs) != 1 || e.IPs[0] != netip.MustParseAddr("203.0.113.9") || len(e.PodCIDRs) != 0 || e.WireguardPubKey != "" || e.Annotations != nil {
		t.Errorf("node ext: %+v", e)
	}
	var names []string
	for _, e := range st.Endpoints {
		names = append(names, e.Pod)
	}
	if want := []string{"dup-1", "on-bare", "terminating", "unready"}; !slices.Equal(names, want) {
		t.Errorf("endpoints %v, want %v", names, want)
	}
	if e := endpoint(st, "a", "on-bare"); e.Node != "" || identityLabel(e, k8ssource.NamespaceLabelPrefix+"env") != "prod" ||
		identityLabel(e, k8ssource.ServiceAccountLabel) != "" {
		t.Errorf("on-bare: %+v", e)
	}
	if e := endpoint(st, "a", "terminating"); e.IsReady() || !e.IsServing() {
		t.Errorf("terminating: ready=%v serving=%v", e.IsReady(), e.IsServing())
	}
	if e := endpoint(st, "a", "unready"); e.IsReady() || e.IsServing() || e.IP != netip.MustParseAddr("10.0.0.5") || identityLabel(e, k8ssource.ServiceAccountLabel) != "web" {
		t.Errorf("unready: %+v", e)
	}
	if len(st.Services) != 1 {
		t.Fatalf("services: %+v", st.Services)
	}
	if s := st.Services[0]; s.ClusterIP.IsValid() || s.Ports[0].Target() != 53 || s.Ports[0].Proto() != "UDP" || s.Annotations["clustermesh.io/min-local-backends"] != "2" {
		t.Errorf("headless: %+v", s)
	}
}

// Every EndpointSlice listing a pod has a say: not ready in one is not ready.
func TestSourceSlicesFold(t *testing.T) {
	cs := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.0.1"}}}},
		pod("a", "p", "n", "10.0.0.1", corev1.PodRunning, nil),
		&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "s1"}, AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{sliceEndpoint("p", "10.0.0.1", "n", true, true, false)}},
		&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "s2"}, AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{func() discoveryv1.Endpoint {
				e := sliceEndpoint("p", "10.0.0.1", "n", false, false, false)
				e.TargetRef.Namespace = "a"
				return e
			}()}},
	)
	r := run(t, &k8ssource.Source{Client: cs})
	testenv.WaitFor(t, 10*time.Second, "the first State", func() bool { return r.count() > 0 })
	if e := endpoint(r.last(), "a", "p"); e == nil || e.IsReady() {
		t.Errorf("p: %+v", e)
	}
	if err := cs.DiscoveryV1().EndpointSlices("a").Delete(context.Background(), "s2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "p ready", func() bool { return endpoint(r.last(), "a", "p").IsReady() })
}

// Run without a client fails at once; a cancelled context before the sync
// returns nil.
func TestSourceRunErrors(t *testing.T) {
	if err := (&k8ssource.Source{}).Run(context.Background(), nil); err == nil {
		t.Error("no client: no error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := 0
	err := (&k8ssource.Source{Client: fake.NewClientset()}).Run(ctx, func(*statesource.State) { calls++ })
	if err != nil || calls != 0 {
		t.Errorf("cancelled before the sync: err %v, %d States", err, calls)
	}
}

func pod(ns, name, node, ip string, phase corev1.PodPhase, deleted *metav1.Time) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "x"}, DeletionTimestamp: deleted},
		Spec:       corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{Phase: phase, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
	if ip != "" {
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	}
	return p
}

// A pod's workload is its controller: a Deployment's ReplicaSet names the
// Deployment (by the pod template hash), a pod without one is its own, an
// owner the mesh cannot name is left out.
func TestSourceWorkloads(t *testing.T) {
	yes, n := true, 0
	owned := func(name, kind, owner, hash string) *corev1.Pod {
		n++
		p := pod("a", name, "", "10.0.0."+fmt.Sprint(n), corev1.PodRunning, nil)
		if hash != "" {
			p.Labels = map[string]string{"app": "x", "pod-template-hash": hash}
		}
		if kind != "" {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "decoy-1"}, {Kind: kind, Name: owner, Controller: &yes}}
		}
		return p
	}
	objs := []runtime.Object{
		owned("frontend-7d9f8-x2k4p", "ReplicaSet", "frontend-7d9f8", "7d9f8"),
		owned("db-0", "StatefulSet", "db", ""),
		owned("loner", "", "", ""),
		owned("rs-only-abc12", "ReplicaSet", "rs-only", "zzz"), // not a Deployment's hash
		owned("odd-1", "Widget", "odd", ""),
	}
	r := run(t, &k8ssource.Source{Client: fake.NewClientset(objs...)})
	testenv.WaitFor(t, 10*time.Second, "the first State", func() bool { return r.count() > 0 })
	st := r.last()
	if err := st.Validate(); err != nil {
		t.Fatal(err)
	}
	for pod, want := range map[string]string{"frontend-7d9f8-x2k4p": "Deployment/frontend", "db-0": "StatefulSet/db",
		"loner": "Pod/loner", "rs-only-abc12": "ReplicaSet/rs-only", "odd-1": ""} {
		if e := endpoint(st, "a", pod); e == nil || e.Workload != want {
			t.Errorf("%s: workload of %+v, want %q", pod, e, want)
		}
	}
}
