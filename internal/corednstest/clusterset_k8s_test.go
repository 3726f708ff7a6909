package corednstest_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	mcscrd "sigs.k8s.io/mcs-api/config/crd"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	mcsclientv1beta1 "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned/typed/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/internal/corednstest"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// wait bounds every change's way from the API server into CoreDNS's answers
// (informer delivery, no cache plugin in front).
const wait = 30 * time.Second

// startClusterset runs CoreDNS with the kubernetes stanza docs/dns.md gives
// operators (kubeadm's, with clusterset.local added to its zones and named
// in multicluster), reading the API server of kubeconfig's context: the
// cluster's own names as usual, and clusterset.local from ServiceImports and
// MCS-labelled EndpointSlices.
func startClusterset(t *testing.T, kubeconfig, context string) *corednstest.Server {
	t.Helper()
	stanza := fmt.Sprintf(`kubernetes cluster.local clusterset.local in-addr.arpa ip6.arpa {
    kubeconfig %s %s
    pods insecure
    multicluster clusterset.local
    fallthrough in-addr.arpa ip6.arpa
    ttl 5
}`, kubeconfig, context)
	return corednstest.Start(t, []string{"."}, stanza)
}

// A ServiceImport resolves through real CoreDNS (the kubernetes plugin's
// multicluster zone) against a real kube-apiserver, as KEP-1645 names it:
// a ClusterSetIP import to its ips, following them, with SRV records for its
// named ports; a headless import to the ready endpoints of its MCS-labelled
// EndpointSlices of every cluster, each also as <hostname>.<cluster>.<svc>;
// an unknown name is NXDOMAIN, a known one without the asked type NODATA,
// and an unexported service NXDOMAIN again. The imports are written as
// v1beta1 (as k8smcs writes them), which CoreDNS reads as v1alpha1.
func TestK8sClustersetDNS(t *testing.T) {
	env := kubetest.Start(t, "east")
	c := env.Clusters[0]
	installMCSCRDs(t, c.Config)
	mcs := mcsclient.NewForConfigOrDie(c.Config).MulticlusterV1beta1()
	dns := startClusterset(t, env.Kubeconfig, c.Name)
	t.Logf("Corefile:\n%s", dns.Corefile)

	const web = "web.default.svc.clusterset.local"
	createImport(t, mcs, "web", mcsv1beta1.ClusterSetIP, []string{"242.255.0.10"}, "http", 80)
	testenv.WaitFor(t, wait, web+" resolving to its ClusterSetIP through a net.Resolver", func() bool {
		return slices.Equal(resolve(dns, web), []string{"242.255.0.10"})
	})
	expect(t, dns, web, dnsmessage.TypeA, "A of a ClusterSetIP import", values("242.255.0.10"))
	expect(t, dns, "_http._tcp."+web, dnsmessage.TypeSRV, "SRV of a named port", values("0 100 80 "+web+"."))
	expect(t, dns, web, dnsmessage.TypeAAAA, "AAAA of an IPv4 import", noData)
	expect(t, dns, "_grpc._tcp."+web, dnsmessage.TypeSRV, "SRV of a port the import does not have", nxDomain)
	expect(t, dns, "nothing.default.svc.clusterset.local", dnsmessage.TypeA, "an unknown service", nxDomain)
	local := createService(t, c.Client, "web")
	expect(t, dns, "web.default.svc.cluster.local", dnsmessage.TypeA, "the cluster's own web, beside the clusterset's", values(local))

	si, err := mcs.ServiceImports("default").Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	si.Spec.IPs = []string{"242.255.0.11"}
	if _, err := mcs.ServiceImports("default").Update(t.Context(), si, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(t, dns, web, dnsmessage.TypeA, "the import's changed ips", values("242.255.0.11"))

	edges(t, mcs, dns)
	headless(t, c.Client, mcs, dns)

	if err := mcs.ServiceImports("default").Delete(t.Context(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(t, dns, web, dnsmessage.TypeA, "the unexported service", nxDomain)
	testenv.WaitFor(t, wait, web+" not found through a net.Resolver", func() bool { return resolve(dns, web) == nil })
}

// edges checks what an importer must know: a dual-stack import answers
// both A and AAAA; an import whose ips are not allocated yet exists
// (NODATA); an import without ports is not served (NXDOMAIN), as CoreDNS
// answers per port.
func edges(t *testing.T, mcs mcsclientv1beta1.MulticlusterV1beta1Interface, dns *corednstest.Server) {
	const api = "api.default.svc.clusterset.local"
	createImport(t, mcs, "api", mcsv1beta1.ClusterSetIP, []string{"242.255.0.20", "fd00:242::20"}, "https", 443)
	expect(t, dns, api, dnsmessage.TypeA, "A of a dual-stack import", values("242.255.0.20"))
	expect(t, dns, api, dnsmessage.TypeAAAA, "AAAA of a dual-stack import", values("fd00:242::20"))
	createImport(t, mcs, "pending", mcsv1beta1.ClusterSetIP, nil, "http", 80)
	expect(t, dns, "pending.default.svc.clusterset.local", dnsmessage.TypeA, "an import without ips yet", noData)
	si := &mcsv1beta1.ServiceImport{
		ObjectMeta: metav1.ObjectMeta{Name: "portless", Namespace: "default"},
		Spec:       mcsv1beta1.ServiceImportSpec{Type: mcsv1beta1.ClusterSetIP, IPs: []string{"242.255.0.30"}, Ports: []mcsv1beta1.ServicePort{}},
	}
	if _, err := mcs.ServiceImports("default").Create(t.Context(), si, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the ServiceImport portless: %v", err)
	}
	expect(t, dns, "portless.default.svc.clusterset.local", dnsmessage.TypeA, "an import without ports", nxDomain)
}

// headless checks a Headless import: the ready endpoints of its slices from
// west and north, their hostnames per cluster, readiness followed.
func headless(t *testing.T, client kubernetes.Interface, mcs mcsclientv1beta1.MulticlusterV1beta1Interface, dns *corednstest.Server) {
	const db = "db.default.svc.clusterset.local"
	createImport(t, mcs, "db", mcsv1beta1.Headless, nil, "pg", 5432)
	west := createSlice(t, client, "db", "west", 5432,
		endpoint{"10.2.0.1", "db-0", true}, endpoint{"10.2.0.2", "db-1", false})
	createSlice(t, client, "db", "north", 5432, endpoint{"10.3.0.1", "db-0", true})
	expect(t, dns, db, dnsmessage.TypeA, "A of a headless import: the ready endpoints of every cluster", values("10.2.0.1", "10.3.0.1"))
	expect(t, dns, "db-0.west."+db, dnsmessage.TypeA, "a west endpoint by hostname", values("10.2.0.1"))
	expect(t, dns, "db-0.north."+db, dnsmessage.TypeA, "the north endpoint of the same hostname", values("10.3.0.1"))
	expect(t, dns, "db-1.west."+db, dnsmessage.TypeA, "an endpoint that is not ready", nxDomain)
	expect(t, dns, "_pg._tcp."+db, dnsmessage.TypeSRV, "SRV of a headless import: one per ready endpoint",
		values("0 50 5432 db-0.north."+db+".", "0 50 5432 db-0.west."+db+"."))

	west.Endpoints[1].Conditions.Ready = new(true)
	west = updateSlice(t, client, west)
	expect(t, dns, db, dnsmessage.TypeA, "an endpoint turned ready", values("10.2.0.1", "10.2.0.2", "10.3.0.1"))
	expect(t, dns, "db-1.west."+db, dnsmessage.TypeA, "the ready endpoint by hostname", values("10.2.0.2"))
	west.Endpoints[0].Conditions.Ready = new(false)
	updateSlice(t, client, west)
	expect(t, dns, db, dnsmessage.TypeA, "an endpoint no longer ready", values("10.2.0.2", "10.3.0.1"))
	createSlice(t, client, "db", "south", 5432, endpoint{"10.4.0.1", "", true})
	expect(t, dns, "10-4-0-1.south."+db, dnsmessage.TypeA, "an endpoint without a hostname, by its address", values("10.4.0.1"))

	if err := mcs.ServiceImports("default").Delete(t.Context(), "db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect(t, dns, db, dnsmessage.TypeA, "a headless service unexported (its slices still there)", nxDomain)
}

// condition is what an answer must be.
type condition func(corednstest.Answer) bool

func values(want ...string) condition {
	return func(a corednstest.Answer) bool {
		return a.RCode == dnsmessage.RCodeSuccess && slices.Equal(a.Values, want)
	}
}

func nxDomain(a corednstest.Answer) bool { return a.NXDomain() }
func noData(a corednstest.Answer) bool   { return a.NoData() }
func servFail(a corednstest.Answer) bool {
	return a.RCode == dnsmessage.RCodeServerFailure
}

// expect waits until name's answer of qtype meets cond and logs it as dig
// shows it (docs/dns.md quotes these lines).
func expect(t *testing.T, dns *corednstest.Server, name string, qtype dnsmessage.Type, what string, cond condition) {
	t.Helper()
	var last corednstest.Answer
	var lastErr error
	deadline := time.Now().Add(wait)
	testenv.WaitFor(t, wait+time.Second, what, func() bool {
		if time.Now().After(deadline) {
			t.Fatalf("%s: last answer (error %v):\n%s", what, lastErr, last)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		last, lastErr = dns.Query(ctx, name, qtype)
		return lastErr == nil && cond(last)
	})
	t.Logf("%s:\n%s", what, strings.TrimSuffix(last.String(), "\n"))
}

// resolve is what a pod-less client's net.Resolver finds for name (nil on
// any error).
func resolve(dns *corednstest.Server, name string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	addrs, err := dns.Resolver().LookupHost(ctx, name+".")
	if err != nil {
		return nil
	}
	slices.Sort(addrs)
	return addrs
}

// installMCSCRDs creates the ServiceImport and ServiceExport CRDs of
// sigs.k8s.io/mcs-api and waits until they are established.
func installMCSCRDs(t *testing.T, cfg *rest.Config) {
	t.Helper()
	crds := dynamic.NewForConfigOrDie(cfg).Resource(schema.GroupVersionResource{
		Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions",
	})
	for _, doc := range [][]byte{mcscrd.ServiceImportCRD, mcscrd.ServiceExportCRD} {
		var u unstructured.Unstructured
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatalf("decoding an MCS CRD: %v", err)
		}
		if _, err := crds.Create(t.Context(), &u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating the CRD %s: %v", u.GetName(), err)
		}
		testenv.WaitFor(t, wait, "the CRD "+u.GetName()+" established", func() bool {
			got, err := crds.Get(t.Context(), u.GetName(), metav1.GetOptions{})
			if err != nil {
				return false
			}
			conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
			return slices.ContainsFunc(conds, func(c any) bool {
				m, _ := c.(map[string]any)
				return m["type"] == "Established" && m["status"] == "True"
			})
		})
	}
}

// createImport creates the ServiceImport default/name with one TCP port.
func createImport(t *testing.T, mcs mcsclientv1beta1.MulticlusterV1beta1Interface, name string, typ mcsv1beta1.ServiceImportType, ips []string, port string, number int32) {
	t.Helper()
	si := &mcsv1beta1.ServiceImport{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: mcsv1beta1.ServiceImportSpec{
			Type:  typ,
			IPs:   ips,
			Ports: []mcsv1beta1.ServicePort{{Name: port, Protocol: corev1.ProtocolTCP, Port: number}},
		},
	}
	if _, err := mcs.ServiceImports("default").Create(t.Context(), si, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the ServiceImport %s: %v", name, err)
	}
}

// createService creates the ClusterIP Service default/name and returns the
// address the API server allocated it.
func createService(t *testing.T, client kubernetes.Interface, name string) string {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}},
	}
	got, err := client.CoreV1().Services("default").Create(t.Context(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the Service %s: %v", name, err)
	}
	return got.Spec.ClusterIP
}

// endpoint is one address of a slice.
type endpoint struct {
	addr, hostname string
	ready          bool
}

// createSlice creates the EndpointSlice of service's endpoints in cluster,
// labelled as KEP-1645 labels an imported service's slices.
func createSlice(t *testing.T, client kubernetes.Interface, service, cluster string, port int32, eps ...endpoint) *discoveryv1.EndpointSlice {
	t.Helper()
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      service + "-" + cluster,
			Namespace: "default",
			Labels: map[string]string{
				mcsv1beta1.LabelServiceName:   service,
				mcsv1beta1.LabelSourceCluster: cluster,
				discoveryv1.LabelManagedBy:    "corednstest.clustermesh.io",
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: new("pg"), Protocol: new(corev1.ProtocolTCP), Port: new(port)}},
	}
	for _, ep := range eps {
		e := discoveryv1.Endpoint{Addresses: []string{ep.addr}, Conditions: discoveryv1.EndpointConditions{Ready: new(ep.ready)}}
		if ep.hostname != "" {
			e.Hostname = new(ep.hostname)
		}
		s.Endpoints = append(s.Endpoints, e)
	}
	got, err := client.DiscoveryV1().EndpointSlices("default").Create(t.Context(), s, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the EndpointSlice %s: %v", s.Name, err)
	}
	return got
}

func updateSlice(t *testing.T, client kubernetes.Interface, s *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	t.Helper()
	got, err := client.DiscoveryV1().EndpointSlices("default").Update(t.Context(), s, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("updating the EndpointSlice %s: %v", s.Name, err)
	}
	return got
}
