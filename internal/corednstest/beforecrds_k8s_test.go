package corednstest_test

import (
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/clustermesh/clustermesh/internal/kubetest"
)

// CoreDNS started before the MCS CRDs exist (their manifests applied after
// the cluster DNS runs) starts after its startup_timeout (5 s) with the
// ServiceImport informer unsynced and answers SERVFAIL in clusterset.local,
// never a NXDOMAIN a client would cache; once the CRDs are installed it
// syncs and answers on its own, without a restart.
func TestK8sClustersetDNSBeforeCRDs(t *testing.T) {
	env := kubetest.Start(t, "east")
	c := env.Clusters[0]
	dns := startClusterset(t, env.Kubeconfig, c.Name)
	const web = "web.default.svc.clusterset.local"
	expect(t, dns, web, dnsmessage.TypeA, "an answer without the CRDs", servFail)
	expect(t, dns, "nothing.default.svc.clusterset.local", dnsmessage.TypeA, "an unknown name without the CRDs", servFail)
	installMCSCRDs(t, c.Config)
	mcs := mcsclient.NewForConfigOrDie(c.Config).MulticlusterV1beta1()
	createImport(t, mcs, "web", mcsv1beta1.ClusterSetIP, []string{"242.255.0.10"}, "http", 80)
	start := time.Now()
	expect(t, dns, web, dnsmessage.TypeA, "the import once the CRDs are installed", values("242.255.0.10"))
	t.Logf("%s resolved %s after the import was created", web, time.Since(start).Round(time.Millisecond))
	expect(t, dns, "nothing.default.svc.clusterset.local", dnsmessage.TypeA, "an unknown name once synced", nxDomain)
}
