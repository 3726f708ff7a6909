package cli

import (
	"context"
	"crypto/x509"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// The keys of a reader's credentials of target's CA in its remotes secret.
func peerCAKey(target string) string   { return ".ca-" + target + ".crt" }
func peerCertKey(target string) string { return ".remote-" + target + ".crt" }
func peerKeyKey(target string) string  { return ".remote-" + target + ".key" }

// Two clusters with their own CAs: connect refuses them, with the flag to
// pass; with --allow-mismatching-ca each apiserver trusts the other's CA
// and each agent verifies the peer with the peer's CA, and real agents and
// apiservers run from what was written reach each other; disconnect takes
// the trust back.
func TestK8sConnectMismatchingCA(t *testing.T) {
	env, east, west := twoEnabledClusters(t, true)
	ctx := context.Background()
	ns := defaultKubeNamespace
	eastIP, westIP := loopbackIP(), loopbackIP()
	if err := east.SetLoadBalancerIngress(ctx, ns, apiserverName, eastIP); err != nil {
		t.Fatal(err)
	}
	if err := west.SetLoadBalancerIngress(ctx, ns, apiserverName, westIP); err != nil {
		t.Fatal(err)
	}

	checkMismatchRefused(t, env, east, west)
	out := kubeRun(t, env, "connect", "--context", "east", "--destination-context", "west", "--allow-mismatching-ca")
	for _, want := range []string{
		"cluster east: secret " + ns + "/" + remotesSecretName + ": reads west with a certificate of its CA",
		"cluster west: secret " + ns + "/" + remotesSecretName + ": reads east with a certificate of its CA"} {
		if !strings.Contains(out, want) {
			t.Errorf("connect --allow-mismatching-ca: output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "trusts the CA") {
		t.Errorf("connect --allow-mismatching-ca made an apiserver trust a foreign CA:\n%s", out)
	}
	// What was written: east reads west with west's CA and a remote-east
	// certificate west's CA issued, and the other way round; no apiserver
	// trusts the other's CA.
	checkReadsPeerWithItsCA(t, east, west, "east", "west")
	checkReadsPeerWithItsCA(t, west, east, "west", "east")
	// Again: nothing changes.
	before := bothVersions(t, east, west)
	if out := kubeRun(t, env, "connect", "--context", "east", "--destination-context", "west", "--allow-mismatching-ca"); strings.Contains(out, "restarts") {
		t.Errorf("connect again:\n%s", out)
	}
	kubeRun(t, env, "enable", "--context", "west", "--cluster-name", "west", "--cluster-id", "2")
	if after := bothVersions(t, east, west); !maps.Equal(before["east"], after["east"]) || !maps.Equal(before["west"], after["west"]) {
		t.Errorf("connect or enable again changed objects:\nbefore %v\nafter  %v", before, after)
	}

	// The apiservers and agents as the pods would run them, from what was
	// written: each agent, with its own CA's remote certificate, reads the
	// other cluster's apiserver, which presents a certificate of its CA.
	ep, wp := startPods(t, env, east, eastIP), startPods(t, env, west, westIP)
	testenv.WaitFor(t, 30*time.Second, "both agents ready with their peer of another CA", func() bool {
		re, ok1 := ep.remoteStatus("west")
		rw, ok2 := wp.remoteStatus("east")
		return ok1 && ok2 && re.Ready && rw.Ready && re.Nodes == 1 && rw.Nodes == 1
	})

	kubeRun(t, env, "disconnect", "--context", "east", "--destination-context", "west")
	checkPeerRemoved(t, east, "west")
	checkPeerRemoved(t, west, "east")
	testenv.WaitFor(t, 10*time.Second, "both agents drop their peer", func() bool {
		_, ok1 := ep.remoteStatus("west")
		_, ok2 := wp.remoteStatus("east")
		return !ok1 && !ok2
	})
}

// bothVersions is the resource versions of east's and west's mesh objects.
func bothVersions(t *testing.T, east, west *kubetest.Cluster) map[string]map[string]string {
	t.Helper()
	return map[string]map[string]string{"east": versions(t, east, defaultKubeNamespace), "west": versions(t, west, defaultKubeNamespace)}
}

// checkMismatchRefused: connect without --allow-mismatching-ca refuses two
// clusters of different CAs, says which flag to pass, and writes nothing.
func checkMismatchRefused(t *testing.T, env *kubetest.Env, east, west *kubetest.Cluster) {
	t.Helper()
	before := bothVersions(t, east, west)
	err := kubeRunErr(t, env, "connect", "--context", "east", "--destination-context", "west")
	for _, want := range []string{"nothing was written", "different mesh CAs", "--ca-from-context east", "--allow-mismatching-ca"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("connect without the flag: error lacks %q:\n%v", want, err)
		}
	}
	if after := bothVersions(t, east, west); !maps.Equal(before["east"], after["east"]) || !maps.Equal(before["west"], after["west"]) {
		t.Errorf("a refused connect wrote:\nbefore %v\nafter  %v", before, after)
	}
}

// checkReadsPeerWithItsCA: c (named self) trusts no foreign CA, and its
// remotes secret reads peer (named name) with peer's CA and a remote-self
// certificate peer's CA issued.
func checkReadsPeerWithItsCA(t *testing.T, c, peer *kubetest.Cluster, self, name string) {
	t.Helper()
	ctx, ns := context.Background(), defaultKubeNamespace
	peerCA := secretCert(t, peer, ns, caSecretName, "ca.crt")
	if cm, err := c.Client.CoreV1().ConfigMaps(ns).Get(ctx, trustedCAsName, metav1.GetOptions{}); err == nil && len(cm.Data) != 0 {
		t.Errorf("%s trusts foreign CAs: %v", self, slices.Collect(maps.Keys(cm.Data)))
	}
	s, err := c.Client.CoreV1().Secrets(ns).Get(ctx, remotesSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var rc agentsync.RemoteConfig
	if err := yaml.Unmarshal(s.Data[name], &rc); err != nil || rc.TrustedCAFile != peerCAKey(name) ||
		rc.CertFile != peerCertKey(name) || rc.KeyFile != peerKeyKey(name) {
		t.Errorf("%s's config for %s: %+v %v", self, name, rc, err)
	}
	if got, err := parseCert(s.Data[peerCAKey(name)]); err != nil || !got.Equal(peerCA) {
		t.Errorf("%s's remotes secret: %s: %v", self, peerCAKey(name), err)
	}
	cert, err := parseCert(s.Data[peerCertKey(name)])
	pool := x509.NewCertPool()
	pool.AddCert(peerCA)
	if err != nil || cert.Subject.CommonName != "remote-"+self || ca.Verify(cert, pool, ca.ClientAuth, time.Now()) != nil {
		t.Errorf("%s's certificate for %s: %v (want remote-%s, signed by %s's CA)", self, name, err, self, name)
	}
}

// checkPeerRemoved: c's remotes secret no longer has peer's config nor
// credentials.
func checkPeerRemoved(t *testing.T, c *kubetest.Cluster, peer string) {
	t.Helper()
	s, err := c.Client.CoreV1().Secrets(defaultKubeNamespace).Get(context.Background(), remotesSecretName, metav1.GetOptions{})
	if err != nil || s.Data[peerCAKey(peer)] != nil || s.Data[peerCertKey(peer)] != nil || s.Data[peerKeyKey(peer)] != nil || s.Data[peer] != nil {
		t.Errorf("remotes after disconnect: %v %v", slices.Sorted(maps.Keys(s.Data)), err)
	}
}
