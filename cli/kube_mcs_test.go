package cli

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/clustermesh/clustermesh/internal/corednstest"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8smcs"
	"github.com/clustermesh/clustermesh/k8sslices"
)

// mcsBound is how long an export may take to become imports in every
// cluster (apiserver publish, the controllers' readers, their passes).
const mcsBound = 20 * time.Second

// mcsRange is the ClusterSetIP range of the test, outside the clusters'
// --service-cluster-ip-range (10.0.0.0/24): it becomes a ServiceCIDR.
const mcsRange = "10.0.1.0/24"

// Three clusters with their pods (apiserver, agent) and 'clustermesh
// slices' (with the MCS controller) each: shop/checkout exported by west
// first, then by east alike and by north with another port. Every cluster
// gets the ServiceImport (ClusterSetIP from the range, port, clusters east
// and west), north's export is in conflict while west's (the oldest) wins,
// east's derived Service has west's backend in a slice labelled with the
// imported name and in its agent's merged service behind the ClusterSetIP;
// unexporting everywhere removes the imports.
func TestK8sMCSEndToEnd(t *testing.T) {
	m := startMCSMesh(t)
	ctx := context.Background()

	// West exports first: the oldest export. East alike a second later,
	// north with port 9090.
	export(t, m.mcs["west"], "shop", "checkout")
	westExport, err := m.mcs["west"].MulticlusterV1beta1().ServiceExports("shop").Get(ctx, "checkout", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 3*time.Second, "a second after west's export (timestamps have seconds)", func() bool {
		return time.Now().After(westExport.CreationTimestamp.Add(time.Second))
	})
	export(t, m.mcs["east"], "shop", "checkout")
	export(t, m.mcs["north"], "shop", "checkout")
	headlessDB(t, m.clusters["west"], "w1", "10.2.1.20")
	export(t, m.mcs["west"], "shop", "db")

	var ip string
	for _, name := range []string{"east", "west", "north"} {
		testenv.WaitFor(t, mcsBound, name+"'s ServiceImport of shop/checkout with clusters east and west", func() bool {
			si, err := m.mcs[name].MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "checkout", metav1.GetOptions{})
			if err != nil || len(si.Spec.IPs) != 1 || si.Spec.Type != mcsv1beta1.ClusterSetIP || len(si.Spec.Ports) != 1 || si.Spec.Ports[0].Port != 80 {
				return false
			}
			a, err := netip.ParseAddr(si.Spec.IPs[0])
			if err != nil || !netip.MustParsePrefix(mcsRange).Contains(a) {
				t.Fatalf("%s's ClusterSetIP %s is not in %s", name, si.Spec.IPs[0], mcsRange)
			}
			if name == "east" {
				ip = si.Spec.IPs[0]
			}
			return slices.Equal(clusterNames(si), []string{"east", "west"})
		})
	}

	// Conditions: north's export conflicts (west's, the oldest, wins).
	testenv.WaitFor(t, mcsBound, "the exports' conditions", func() bool {
		return condition(t, m.mcs["north"], "Conflict") == "True/PortConflict" && condition(t, m.mcs["west"], "Conflict") == "False/NoConflicts" &&
			condition(t, m.mcs["east"], "Conflict") == "False/NoConflicts" && condition(t, m.mcs["north"], "Valid") == "True/Valid"
	})

	// East's derived Service: the ClusterSetIP; west's backend (not
	// north's, in conflict) in a slice labelled with the imported name.
	derived := k8smcs.DerivedName("shop", "checkout")
	svc, err := m.clusters["east"].Client.CoreV1().Services("shop").Get(ctx, derived, metav1.GetOptions{})
	if err != nil || svc.Spec.ClusterIP != ip || svc.Annotations[k8smcs.AnnotationGlobal] != "true" {
		t.Fatalf("east's derived service: %v %+v", err, svc)
	}
	testenv.WaitFor(t, mcsBound, "west's backend in east's slices labelled multicluster.kubernetes.io/service-name=checkout", func() bool {
		l, err := m.clusters["east"].Client.DiscoveryV1().EndpointSlices("shop").List(ctx, metav1.ListOptions{
			LabelSelector: mcsv1beta1.LabelServiceName + "=checkout," + discoveryv1.LabelManagedBy + "=" + k8sslices.ManagedBy})
		if err != nil {
			return false
		}
		var addrs []string
		for _, s := range l.Items {
			for _, e := range s.Endpoints {
				addrs = append(addrs, s.Labels[k8sslices.LabelSourceCluster]+"="+e.Addresses[0])
			}
		}
		return slices.Equal(addrs, []string{"west=10.2.1.10"})
	})

	// East's agent: the ClusterSetIP is the frontend of the merged derived
	// service, with east's own pod and west's.
	testenv.WaitFor(t, mcsBound, "east's agent balancing the ClusterSetIP over east's and west's backends", func() bool {
		s, ok := m.pods["east"].service("shop", derived)
		return ok && strings.HasPrefix(s.Frontend, ip+":") && s.LocalTotal == 1 && s.Remote["west"] == 1 && s.Remote["north"] == 0
	})

	// east's cluster DNS (real CoreDNS, the Corefile of docs/dns.md):
	// checkout's ClusterSetIP, and west's pod for the headless db.
	dns := clustersetDNS(t, m.env, "east")
	if dns != nil {
		testenv.WaitFor(t, mcsBound, "east's DNS answering checkout's ClusterSetIP and db's pod in west", func() bool {
			return slices.Equal(lookup(dns, "checkout.shop.svc.clusterset.local"), []string{ip}) &&
				slices.Equal(lookup(dns, "db.shop.svc.clusterset.local"), []string{"10.2.1.20"})
		})
		for _, name := range []string{"checkout", "db"} {
			a, _ := dns.Query(ctx, name+".shop.svc.clusterset.local", dnsmessage.TypeA)
			t.Logf("east's DNS: %s", a)
		}
	}

	out, err := run(ctx, "slices", "status", "--status-addr", m.socks["east"])
	if err != nil || !strings.Contains(out, "import shop/checkout: ClusterSetIP "+ip+", ports http 80/TCP, clusters east, west (oldest export: west)") ||
		!strings.Contains(out, "1 remote endpoints in 1 slices") {
		t.Errorf("slices status: %v\n%s", err, out)
	}
	t.Logf("$ clustermesh slices status --status-addr ...\n%s", out)
	out, _ = run(ctx, "slices", "status", "--status-addr", m.socks["north"])
	if !strings.Contains(out, "conflict north: PortConflict") {
		t.Errorf("north's slices status:\n%s", out)
	}
	t.Logf("$ clustermesh slices status (north)\n%s", out)
	out = kubeRun(t, m.env, "status", "--context", "east")
	if !strings.Contains(out, " shop/checkout: ClusterSetIP "+ip+", clusters east, west; 1 remote endpoints in 1 slices") ||
		!strings.Contains(out, " shop/db: Headless headless, clusters west; 1 remote endpoints in 1 slices") ||
		!strings.Contains(out, " shop/"+derived+": 1 endpoints in 1 slices (west)") {
		t.Errorf("status --context east:\n%s", out)
	}
	t.Logf("$ clustermesh status --context east\n%s", out)
	if out = kubeRun(t, m.env, "status", "--context", "north"); !strings.Contains(out, "conflicts:  export shop/checkout: PortConflict: ") {
		t.Errorf("status --context north:\n%s", out)
	}
	t.Logf("$ clustermesh status --context north\n%s", out)
	kubectl(t, m.env, "east", "get", "serviceexports,serviceimports", "-A")
	kubectl(t, m.env, "north", "get", "serviceexports", "-n", "shop", "checkout", "-o", "jsonpath={range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{\"\\n\"}{end}")
	kubectl(t, m.env, "east", "get", "serviceimports", "-n", "shop", "checkout", "-o", "yaml")
	kubectl(t, m.env, "east", "get", "services", "-n", "shop")
	kubectl(t, m.env, "east", "get", "endpointslices", "-n", "shop", "-l", mcsv1beta1.LabelServiceName+"=checkout")

	// East disconnects from west: west leaves east's import at once (and
	// its export with its remotes secret), east's own export is the oldest
	// left there.
	out = kubeRun(t, m.env, "disconnect", "--context", "east", "--destination-context", "west", "--force")
	if !strings.Contains(out, "cluster east: took west out of 2 ServiceImports") {
		t.Errorf("disconnect output:\n%s", out)
	}
	t.Logf("$ clustermesh disconnect --context east --destination-context west --force\n%s", out)
	testenv.WaitFor(t, mcsBound, "east's import with east alone", func() bool {
		si, err := m.mcs["east"].MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "checkout", metav1.GetOptions{})
		return err == nil && slices.Equal(clusterNames(si), []string{"east"})
	})

	// Unexport: north, then west and east; the imports go everywhere.
	for _, name := range []string{"north", "west", "east"} {
		if err := m.mcs[name].MulticlusterV1beta1().ServiceExports("shop").Delete(ctx, "checkout", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.mcs["west"].MulticlusterV1beta1().ServiceExports("shop").Delete(ctx, "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if dns != nil {
		testenv.WaitFor(t, mcsBound, "east's DNS: NXDOMAIN for the unexported names", func() bool {
			a, err := dns.Query(ctx, "checkout.shop.svc.clusterset.local", dnsmessage.TypeA)
			b, berr := dns.Query(ctx, "db.shop.svc.clusterset.local", dnsmessage.TypeA)
			return err == nil && berr == nil && a.NXDomain() && b.NXDomain()
		})
	}
	for _, name := range []string{"east", "west", "north"} {
		testenv.WaitFor(t, mcsBound, name+"'s ServiceImport and derived Service gone", func() bool {
			_, err := m.mcs[name].MulticlusterV1beta1().ServiceImports("shop").Get(ctx, "checkout", metav1.GetOptions{})
			_, serr := m.clusters[name].Client.CoreV1().Services("shop").Get(ctx, derived, metav1.GetOptions{})
			return apierrors.IsNotFound(err) && apierrors.IsNotFound(serr)
		})
	}
}

// mcsMesh is three connected clusters (east 1, west 2, north 3) with the
// MCS CRDs, each with shop/checkout (not global; one pod; north's on port
// 9090), its pods running and 'clustermesh slices' with the MCS controller.
type mcsMesh struct {
	env      *kubetest.Env
	clusters map[string]*kubetest.Cluster
	mcs      map[string]mcsclient.Interface
	pods     map[string]*podRun
	socks    map[string]string
}

func startMCSMesh(t *testing.T) *mcsMesh {
	t.Helper()
	ctx := context.Background()
	names := []string{"east", "west", "north"}
	env := kubetest.Start(t, names...)
	m := &mcsMesh{env: env, clusters: map[string]*kubetest.Cluster{}, mcs: map[string]mcsclient.Interface{},
		pods: map[string]*podRun{}, socks: map[string]string{}}
	ips := map[string]string{}
	for i, name := range names {
		c := env.Cluster(name)
		m.clusters[name] = c
		if err := k8smcs.InstallCRDs(ctx, c.Client); err != nil {
			t.Fatal(err)
		}
		mc, err := mcsclient.NewForConfig(c.Config)
		if err != nil {
			t.Fatal(err)
		}
		m.mcs[name] = mc
		id := strconv.Itoa(i + 1)
		node := name[:1] + "1"
		if _, err := c.CreateNode(ctx, kubetest.Node{Name: node, InternalIP: "192.168." + id + ".1", PodCIDRs: []string{"10." + id + ".1.0/24"}}); err != nil {
			t.Fatal(err)
		}
		args := []string{"enable", "--context", name, "--cluster-name", name, "--cluster-id", id}
		if name != "east" {
			args = append(args, "--ca-from-context", "east")
		}
		kubeRun(t, env, args...)
		ips[name] = loopbackIP()
		if err := c.SetLoadBalancerIngress(ctx, defaultKubeNamespace, apiserverName, ips[name]); err != nil {
			t.Fatal(err)
		}
		port := int32(80)
		if name == "north" {
			port = 9090
		}
		mcsShop(t, c, node, "10."+id+".1.10", port)
	}
	kubeRun(t, env, "connect", "--context", "east", "--destination-context", "west")
	kubeRun(t, env, "connect", "--context", "east", "--destination-context", "north")
	kubeRun(t, env, "connect", "--context", "west", "--destination-context", "north")
	for i, name := range names {
		m.pods[name] = startPods(t, env, m.clusters[name], ips[name])
		m.socks[name] = startMCSSlices(t, env, m.clusters[name], i+1, m.pods[name].remote)
	}
	t.Cleanup(func() { // runs before the processes stop
		if !t.Failed() {
			return
		}
		for _, name := range names {
			out, _ := run(ctx, "slices", "status", "--status-addr", m.socks[name])
			t.Logf("%s's slices status:\n%s", name, out)
			kubectl(t, env, name, "get", "serviceexports,serviceimports", "-A", "-o", "yaml")
		}
	})
	return m
}

// mcsShop creates shop/checkout (not global) on port with one ready pod
// and its EndpointSlice, as the endpoint slice controller would.
func mcsShop(t *testing.T, c *kubetest.Cluster, node, podIP string, port int32) {
	t.Helper()
	ctx := context.Background()
	if err := c.CreateNamespace(ctx, "shop", nil); err != nil {
		t.Fatal(err)
	}
	pod := "checkout-" + node
	if _, err := c.CreatePod(ctx, kubetest.Pod{Namespace: "shop", Name: pod, Node: node, IP: podIP, Labels: map[string]string{"app": "checkout"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "checkout"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "checkout"},
			Ports: []corev1.ServicePort{{Name: "http", Port: port, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ready := true
	if _, err := c.Client.DiscoveryV1().EndpointSlices("shop").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "checkout-1", Labels: map[string]string{discoveryv1.LabelServiceName: "checkout"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{podIP}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: pod}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// export creates the ServiceExport namespace/name.
func export(t *testing.T, mc mcsclient.Interface, namespace, name string) {
	t.Helper()
	if _, err := mc.MulticlusterV1beta1().ServiceExports(namespace).Create(context.Background(), &mcsv1beta1.ServiceExport{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// condition is "status/reason" of the condition typ of shop/checkout's
// ServiceExport ("" without it).
func condition(t *testing.T, mc mcsclient.Interface, typ string) string {
	t.Helper()
	e, err := mc.MulticlusterV1beta1().ServiceExports("shop").Get(context.Background(), "checkout", metav1.GetOptions{})
	if err != nil {
		return ""
	}
	for _, c := range e.Status.Conditions {
		if c.Type == typ {
			return string(c.Status) + "/" + c.Reason
		}
	}
	return ""
}

func clusterNames(si *mcsv1beta1.ServiceImport) []string {
	var out []string
	for _, c := range si.Status.Clusters {
		out = append(out, c.Cluster)
	}
	return out
}

// startMCSSlices runs 'clustermesh slices' (with the MCS controller and
// the test's ClusterSetIP range) for c until t ends; it returns its status
// socket.
func startMCSSlices(t *testing.T, env *kubetest.Env, c *kubetest.Cluster, id int, configDir string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "slices.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := run(ctx, "slices", "--cluster-name", c.Name, "--cluster-id", strconv.Itoa(id), "--config-dir", configDir,
			"--kubeconfig", env.Kubeconfig, "--context", c.Name, "--namespace", defaultKubeNamespace,
			"--status-addr", sock, "--coalesce", "20ms", "--identity", "slices-"+c.Name, "--clusterset-ip-range", mcsRange)
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("slices %s: %v", c.Name, err)
		}
	})
	return sock
}

// kubectl runs kubectl on context and logs its output (docs/mcs.md shows
// it).
func kubectl(t *testing.T, env *kubetest.Env, context string, args ...string) {
	t.Helper()
	ctx, cancel := context2s()
	defer cancel()
	out, err := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", env.Kubeconfig, "--context", context}, args...)...).CombinedOutput()
	if err != nil {
		t.Logf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("$ kubectl --context %s %s\n%s", context, strings.Join(args, " "), out)
}

func context2s() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

// headlessDB creates shop/db (headless, port 5432, not global) with one
// ready pod at podIP.
func headlessDB(t *testing.T, c *kubetest.Cluster, node, podIP string) {
	t.Helper()
	ctx := context.Background()
	if _, err := c.CreatePod(ctx, kubetest.Pod{Namespace: "shop", Name: "db-" + node, Node: node, IP: podIP, Labels: map[string]string{"app": "db"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": "db"},
			Ports: []corev1.ServicePort{{Name: "pg", Port: 5432, Protocol: corev1.ProtocolTCP}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// clustersetDNS runs CoreDNS answering clusterset.local from cluster's API
// server (docs/dns.md's stanza), or returns nil without a CoreDNS binary
// (make coredns builds it; make test does).
func clustersetDNS(t *testing.T, env *kubetest.Env, cluster string) *corednstest.Server {
	t.Helper()
	if _, err := corednstest.Binary(); err != nil && !testenv.InCI() {
		t.Logf("no DNS checks: %v", err)
		return nil
	}
	return corednstest.Start(t, []string{"."}, fmt.Sprintf(`kubernetes cluster.local clusterset.local {
    kubeconfig %s %s
    multicluster clusterset.local
    ttl 5
}`, env.Kubeconfig, cluster))
}

// lookup is the sorted A answers of name (nil on an error or none).
func lookup(dns *corednstest.Server, name string) []string {
	a, err := dns.Query(context.Background(), name, dnsmessage.TypeA)
	if err != nil {
		return nil
	}
	return a.Values
}
