package corednstest_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/clustermesh/clustermesh/internal/corednstest"
	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// The figures of clusterset.local names served by CoreDNS's kubernetes
// plugin (multicluster option) from a real kube-apiserver: a ServiceImport's
// ips changed → CoreDNS answering the new address, p99 over 100 changes;
// and an A query of a ClusterSetIP name over UDP on loopback, p99 over
// 5,000 queries one after the other.
func TestFiguresClustersetDNS(t *testing.T) {
	figure.Require(t)
	env := kubetest.Start(t, "east")
	c := env.Clusters[0]
	installMCSCRDs(t, c.Config)
	mcs := mcsclient.NewForConfigOrDie(c.Config).MulticlusterV1beta1()
	imports := mcs.ServiceImports("default")
	dns := startClusterset(t, env.Kubeconfig, c.Name)
	const web = "web.default.svc.clusterset.local"
	createImport(t, mcs, "web", mcsv1beta1.ClusterSetIP, []string{"242.255.0.1"}, "http", 80)
	expect(t, dns, web, dnsmessage.TypeA, "the first address", values("242.255.0.1"))

	const changes = 100
	var took []time.Duration
	for i := 2; i <= changes+1; i++ {
		si, err := imports.Get(t.Context(), "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ip := fmt.Sprintf("242.255.0.%d", i)
		si.Spec.IPs = []string{ip}
		start := time.Now()
		if _, err := imports.Update(t.Context(), si, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, wait, web+" answering "+ip, func() bool {
			a, err := query(t, dns, web)
			return err == nil && slices.Equal(a.Values, []string{ip})
		})
		took = append(took, time.Since(start))
	}
	p50, p99 := percentiles(took)
	t.Logf("ServiceImport ips changed → CoreDNS answering the new address, %d changes: p50 %s, p99 %s", changes, p50, p99)
	figure.Print("dns.clusterset.propagation_p99_ms", float64(p99.Microseconds())/1000, "ms")

	const queries = 5000
	took = took[:0]
	for range queries {
		start := time.Now()
		if _, err := query(t, dns, web); err != nil {
			t.Fatal(err)
		}
		took = append(took, time.Since(start))
	}
	p50, p99 = percentiles(took)
	t.Logf("A query of %s over UDP on loopback, %d queries: p50 %s, p99 %s", web, queries, p50, p99)
	figure.Print("dns.clusterset.query_p99_us", float64(p99.Nanoseconds())/1000, "us")
}

func query(t *testing.T, dns *corednstest.Server, name string) (corednstest.Answer, error) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	return dns.Query(ctx, name, dnsmessage.TypeA)
}

// percentiles are the 50th and 99th percentiles of d (sorted in place).
func percentiles(d []time.Duration) (p50, p99 time.Duration) {
	slices.Sort(d)
	return d[len(d)/2], d[(len(d)*99)/100]
}
