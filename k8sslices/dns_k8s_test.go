package k8sslices_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/corednstest"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/k8sslices"
)

// startCoreDNS runs CoreDNS serving cluster.local from cluster's API
// server until t ends; it returns a resolver asking it.
func startCoreDNS(t *testing.T, env *kubetest.Env, cluster string) *net.Resolver {
	t.Helper()
	stanza := fmt.Sprintf("kubernetes cluster.local {\n    kubeconfig %s %s\n}", env.Kubeconfig, cluster)
	return corednstest.Start(t, []string{"cluster.local"}, stanza).Resolver()
}

// lookup is the sorted addresses name resolves to (none on any error).
func lookup(r *net.Resolver, name string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	addrs, err := r.LookupHost(ctx, name)
	if err != nil {
		return nil
	}
	slices.Sort(addrs)
	return addrs
}

// A headless global service resolves, through the cluster DNS (real
// CoreDNS and its kubernetes plugin), to the remote backends the writer put
// in its EndpointSlices; it follows them, and resolves to nothing once the
// annotation goes.
func TestK8sSlicesHeadlessDNS(t *testing.T) {
	env := kubetest.Start(t, "east")
	client := env.Clusters[0].Client
	dns := startCoreDNS(t, env, "east")
	createService(t, client, "web", globalSync()) // headless
	src := newSource()
	src.set("default", "web", "west", 8080, "10.2.0.1", "10.2.0.2")
	src.set("default", "web", "north", 8080, "10.3.0.1")
	run(t, client, src, "a", nil)
	const name = "web.default.svc.cluster.local"
	testenv.WaitFor(t, 30*time.Second, name+" resolving to west's and north's backends", func() bool {
		return slices.Equal(lookup(dns, name), []string{"10.2.0.1", "10.2.0.2", "10.3.0.1"})
	})
	src.set("default", "web", "west", 8080, "10.2.0.3")
	testenv.WaitFor(t, wait, name+" following west", func() bool {
		return slices.Equal(lookup(dns, name), []string{"10.2.0.3", "10.3.0.1"})
	})
	svc, err := client.CoreV1().Services("default").Get(context.Background(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(svc.Annotations, k8sslices.AnnotationSyncEndpointSlices)
	if _, err := client.CoreV1().Services("default").Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, wait, name+" resolving to nothing without the annotation", func() bool { return len(lookup(dns, name)) == 0 })
}
