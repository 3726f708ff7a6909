package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/kubemesh"
	"github.com/clustermesh/clustermesh/wire"
)

// loopbackIP is a random 127.x.y.z address (LoadBalancer addresses the
// local apiservers listen on, port 2379; random so that two test runs on
// one machine do not collide).
func loopbackIP() string {
	return fmt.Sprintf("127.%d.%d.%d", 64+rand.IntN(128), rand.IntN(256), 1+rand.IntN(254))
}

// shop creates a global service shop/checkout (affinity local) with one
// ready pod and its EndpointSlice.
func shop(t *testing.T, c *kubetest.Cluster, node, podIP string) *discoveryv1.EndpointSlice {
	t.Helper()
	ctx := context.Background()
	if err := c.CreateNamespace(ctx, "shop", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreatePod(ctx, kubetest.Pod{Namespace: "shop", Name: "checkout-" + node, Node: node, IP: podIP, Labels: map[string]string{"app": "checkout"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "checkout", Annotations: map[string]string{wire.AnnotationGlobal: "true", wire.AnnotationAffinity: "local"}},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "checkout"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ready := true
	s, err := c.Client.DiscoveryV1().EndpointSlices("shop").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "checkout-1", Labels: map[string]string{discoveryv1.LabelServiceName: "checkout"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{podIP}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: "checkout-" + node}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// enable, connect (after its preflight found the missing endpoint and the
// certificate that did not name it), the mesh running from what was
// written: agents ready, a global service with local and remote backends
// failing over; then a refused and a forced disconnect.
func TestK8sConnectDisconnect(t *testing.T) {
	env, east, west := twoEnabledClusters(t, false)
	ctx := context.Background()
	ns := defaultKubeNamespace

	if err := kubeRunErr(t, env, "connect", "--context", "east", "--destination-context", "west"); !strings.Contains(err.Error(), "no LoadBalancer address yet") {
		t.Errorf("connect without addresses: %v", err)
	}
	eastIP, westIP := loopbackIP(), loopbackIP()
	for _, x := range []struct {
		c  *kubetest.Cluster
		ip string
	}{{east, eastIP}, {west, westIP}} {
		if err := x.c.SetLoadBalancerIngress(ctx, ns, apiserverName, x.ip); err != nil {
			t.Fatal(err)
		}
	}
	// The server certificates do not name the new addresses: connect
	// re-issues them, and the apiservers restart to load them.
	out := kubeRun(t, env, "connect", "--context", "east", "--destination-context", "west")
	for _, want := range []string{
		"east reads west at https://" + westIP + ":2379", "west reads east at https://" + eastIP + ":2379",
		"cluster west: re-issued the apiserver's server certificate (secret " + ns + "/" + serverSecretName + ") to name " + westIP,
		"cluster east: re-issued the apiserver's server certificate", "cluster west: the apiserver pod restarts to load it",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("connect: output lacks %q:\n%s", want, out)
		}
	}
	checkConnectWrote(t, east, west, eastIP, westIP)
	// Connecting again, or enabling again, changes nothing.
	before := map[string]map[string]string{"east": versions(t, east, ns), "west": versions(t, west, ns)}
	if out := kubeRun(t, env, "connect", "--context", "west", "--destination-context", "east"); strings.Contains(out, "re-issued") || strings.Contains(out, "restarts") {
		t.Errorf("connect again:\n%s", out)
	}
	kubeRun(t, env, "enable", "--context", "east", "--cluster-name", "east", "--cluster-id", "1")
	kubeRun(t, env, "enable", "--context", "west", "--cluster-name", "west", "--cluster-id", "2", "--ca-from-context", "east")
	if after := (map[string]map[string]string{"east": versions(t, east, ns), "west": versions(t, west, ns)}); !maps.Equal(before["east"], after["east"]) || !maps.Equal(before["west"], after["west"]) {
		t.Errorf("connect or enable again changed objects:\nbefore %v\nafter  %v", before, after)
	}

	checkKubeStatus(t, env, east, westIP)

	// The global service in both clusters, then the mesh as the pods would
	// run it.
	eastSlice := shop(t, east, "e1", "10.1.1.10")
	shop(t, west, "w1", "10.2.1.10")
	ep, wp := startPods(t, env, east, eastIP), startPods(t, env, west, westIP)
	testenv.WaitFor(t, 30*time.Second, "both agents ready with their peer", func() bool {
		re, ok1 := ep.remoteStatus("west")
		rw, ok2 := wp.remoteStatus("east")
		return ok1 && ok2 && re.Ready && rw.Ready && re.Nodes == 1 && re.Endpoints == 1 && rw.Nodes == 1
	})
	testenv.WaitFor(t, 10*time.Second, "east's checkout: 1 local and 1 remote backend, local selected", func() bool {
		s, ok := ep.service("shop", "checkout")
		return ok && s.LocalHealthy == 1 && s.Remote["west"] == 1 && s.SelectedFrom == "local"
	})
	// The agent enforces the cluster's own NetworkPolicies.
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "checkout", Namespace: "shop"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "checkout"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	if _, err := east.Client.NetworkingV1().NetworkPolicies("shop").Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "east's agent enforces the cluster's NetworkPolicy", func() bool {
		st := ep.status()
		return st.KubernetesPolicy != nil && st.KubernetesPolicy.Objects == 1 && st.Policy != nil && st.Policy.Rules == 1
	})
	// The agents' reports, summed up by status --context.
	var kst string
	testenv.WaitFor(t, 10*time.Second, "status --context east counts east's agent", func() bool {
		kst = kubeRun(t, env, "status", "--context", "east")
		return strings.Contains(kst, "agents:     1 reporting") && strings.Contains(kst, "west: connected on 1/1 agents, synced on 1") &&
			strings.Contains(kst, "shop/checkout: remote backends min 1, max 1 across 1 agents")
	})
	if !strings.Contains(kst, "configured 1/1.0/1, connected 1/1.0/1, synced 1/1.0/1") {
		t.Errorf("status --context east, agents' remotes min/avg/max:\n%s", kst)
	}
	// east's backend turns not ready: east fails over to west.
	f := false
	eastSlice.Endpoints[0].Conditions.Ready = &f
	if _, err := east.Client.DiscoveryV1().EndpointSlices("shop").Update(ctx, eastSlice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "east's checkout fails over to west", func() bool {
		s, ok := ep.service("shop", "checkout")
		return ok && s.LocalHealthy == 0 && s.SelectedFrom == "remote" && s.Selected == 1
	})

	checkDisconnect(t, env, east, west, ep, wp)
}

// checkConnectWrote: after connect, each server certificate names its
// address, and each side holds its config for the other, its remote
// certificate, and an apiserver that lets the other read.
func checkConnectWrote(t *testing.T, east, west *kubetest.Cluster, eastIP, westIP string) {
	t.Helper()
	ctx := context.Background()
	ns := defaultKubeNamespace
	for _, x := range []struct {
		c  *kubetest.Cluster
		ip string
	}{{east, eastIP}, {west, westIP}} {
		if !namesIP(secretCert(t, x.c, ns, serverSecretName, corev1.TLSCertKey), x.ip) {
			t.Errorf("server certificate does not name %s after connect", x.ip)
		}
	}
	for _, x := range []struct {
		c          *kubetest.Cluster
		self, peer string
		peerIP     string
	}{{east, "east", "west", westIP}, {west, "west", "east", eastIP}} {
		s, err := x.c.Client.CoreV1().Secrets(ns).Get(ctx, remotesSecretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var rc agentsync.RemoteConfig
		if err := yaml.Unmarshal(s.Data[x.peer], &rc); err != nil || len(rc.Endpoints) != 1 || rc.Endpoints[0] != "https://"+x.peerIP+":2379" {
			t.Errorf("%s's config for %s: %+v %v", x.self, x.peer, rc, err)
		}
		if cert, err := parseCert(s.Data[remotesCertKey]); err != nil || cert.Subject.CommonName != "remote-"+x.self {
			t.Errorf("%s's remote certificate: %v %v", x.self, cert, err)
		}
		d, err := x.c.Client.AppsV1().Deployments(ns).Get(ctx, apiserverName, metav1.GetOptions{})
		if err != nil || !strings.Contains(strings.Join(d.Spec.Template.Spec.Containers[0].Command, " "), "--peer="+x.peer) {
			t.Errorf("%s's apiserver: %v %v", x.self, d.Spec.Template.Spec.Containers[0].Command, err)
		}
	}
}

// checkDisconnect: disabling a connected cluster is refused, so is a
// disconnect that strands east's checkout; a forced one drains both agents
// and leaves no peers, and then disable works.
func checkDisconnect(t *testing.T, env *kubetest.Env, east, west *kubetest.Cluster, ep, wp *podRun) {
	t.Helper()
	ctx := context.Background()
	ns := defaultKubeNamespace
	// Disabling a connected cluster is refused.
	if err := kubeRunErr(t, env, "disable", "--context", "east"); !strings.Contains(err.Error(), "connected to west") || !strings.Contains(err.Error(), "disconnect") {
		t.Errorf("disable while connected: %v", err)
	}
	// Disconnecting would leave east's checkout without backends: refused.
	before := map[string]map[string]string{"east": versions(t, east, ns), "west": versions(t, west, ns)}
	err := kubeRunErr(t, env, "disconnect", "--context", "east", "--destination-context", "west")
	if !strings.Contains(err.Error(), "shop/checkout in cluster east: 0 ready local backends, 1 in west") || !strings.Contains(err.Error(), "--force") {
		t.Errorf("disconnect: %v", err)
	}
	if after := (map[string]map[string]string{"east": versions(t, east, ns), "west": versions(t, west, ns)}); !maps.Equal(before["east"], after["east"]) || !maps.Equal(before["west"], after["west"]) {
		t.Errorf("a refused disconnect wrote:\nbefore %v\nafter  %v", before, after)
	}
	kubeRun(t, env, "disconnect", "--context", "east", "--destination-context", "west", "--force")
	testenv.WaitFor(t, 10*time.Second, "both agents drop their peer", func() bool {
		_, ok1 := ep.remoteStatus("west")
		_, ok2 := wp.remoteStatus("east")
		s, _ := ep.service("shop", "checkout")
		return !ok1 && !ok2 && s.Remote["west"] == 0
	})
	for _, c := range []*kubetest.Cluster{east, west} {
		cm, err := c.Client.CoreV1().ConfigMaps(ns).Get(ctx, meshConfigName, metav1.GetOptions{})
		if err != nil || cm.Data[cfgPeers] != "" {
			t.Errorf("peers after disconnect: %v %v", cm.Data, err)
		}
	}
	// Nothing left connected: disable works without --force.
	kubeRun(t, env, "disable", "--context", "east")
}

// checkKubeStatus: the status of east (connected to west) from its objects;
// waiting for its deployment, which no kubelet runs here, until the test
// plays the kubelet.
func checkKubeStatus(t *testing.T, env *kubetest.Env, east *kubetest.Cluster, westIP string) {
	t.Helper()
	ctx := context.Background()
	kf := &kubeFlags{kubeconfig: env.Kubeconfig}
	var out, progress strings.Builder
	if err := runKubeStatus(ctx, kf, "east", defaultKubeNamespace, false, 5*time.Second, false, &out, &progress); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Cluster east (id 1)", "0/1 ready, service LoadBalancer", "peers:      west", "west at https://" + westIP + ":2379", "not ready: deployment"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	err := runKubeStatus(ctx, kf, "east", defaultKubeNamespace, true, 1500*time.Millisecond, false, &out, &progress)
	if err == nil || !strings.Contains(err.Error(), "not ready after") || !strings.Contains(progress.String(), "waiting: deployment") {
		t.Errorf("status --wait: %v, progress %q", err, progress.String())
	}
	// The kubelet: the apiserver pod is ready.
	d, err := east.Client.AppsV1().Deployments(defaultKubeNamespace).Get(ctx, apiserverName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Status.Replicas, d.Status.ReadyReplicas, d.Status.AvailableReplicas = 1, 1, 1
	if _, err := east.Client.AppsV1().Deployments(defaultKubeNamespace).UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := runKubeStatus(ctx, kf, "east", defaultKubeNamespace, true, 10*time.Second, true, &out, &progress); err != nil {
		t.Fatal(err)
	}
	var st kubemesh.Status
	if err := json.Unmarshal([]byte(out.String()), &st); err != nil || !st.Ready || st.ReadyReplicas != 1 || st.Remotes["west"] == "" {
		t.Errorf("status -o json once ready: %+v %v\n%s", st, err, out.String())
	}
	// The same through the command line.
	if cli := kubeRun(t, env, "status", "--context", "east", "--wait", "--timeout", "10s"); !strings.Contains(cli, "Cluster east (id 1)") {
		t.Errorf("clustermesh status --context east:\n%s", cli)
	}
}

// twoEnabledClusters starts the API servers of east (id 1) and west (id 2),
// each with one node (e1 192.168.1.1, pods 10.1.1.0/24; w1 192.168.2.1,
// 10.2.1.0/24), and enables the mesh in both: west with east's CA, or with
// a CA of its own (ownCA).
func twoEnabledClusters(t *testing.T, ownCA bool) (*kubetest.Env, *kubetest.Cluster, *kubetest.Cluster) {
	t.Helper()
	env := kubetest.Start(t, "east", "west")
	east, west := env.Cluster("east"), env.Cluster("west")
	ctx := context.Background()
	if _, err := east.CreateNode(ctx, kubetest.Node{Name: "e1", InternalIP: "192.168.1.1", PodCIDRs: []string{"10.1.1.0/24"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := west.CreateNode(ctx, kubetest.Node{Name: "w1", InternalIP: "192.168.2.1", PodCIDRs: []string{"10.2.1.0/24"}}); err != nil {
		t.Fatal(err)
	}
	kubeRun(t, env, "enable", "--context", "east", "--cluster-name", "east", "--cluster-id", "1")
	westArgs := []string{"enable", "--context", "west", "--cluster-name", "west", "--cluster-id", "2", "--ca-from-context", "east"}
	if ownCA {
		westArgs = westArgs[:len(westArgs)-2]
	}
	kubeRun(t, env, westArgs...)
	return env, east, west
}
