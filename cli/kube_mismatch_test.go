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

	before := map[string]map[string]string{"east": versions(t, east, ns), "west": versions(t, west, ns)}
	err := kubeRunErr(t, env, "connect", "--context", "east", "--destination-context", "west")
	for _, want := range []string{"nothing was written", "different mesh CAs", "--ca-from-context east", "--allow-mismatching-ca"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("connect without the flag: error lacks %q:\n%v", want, err)
		}
	}
	if after := (map[string]map[string]string{"east": versions(t, east, ns), "west": versions(t, west, ns)}); !maps.Equal(before["east"], after["east"]) || !maps.Equal(before["west"], after["west"]) {
		t.Errorf("a refused connect wrote:\nbefore %v\nafter  %v", before, after)
	}

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
	for _, x := range []struct {
		c, peer    *kubetest.Cluster
		self, name string
	}{{east, west, "east", "west"}, {west, east, "west", "east"}} {
		peerCA := secretCert(t, x.peer, ns, caSecretName, "ca.crt")
		if cm, err := x.c.Client.CoreV1().ConfigMaps(ns).Get(ctx, trustedCAsName, metav1.GetOptions{}); err == nil && len(cm.Data) != 0 {
			t.Errorf("%s trusts foreign CAs: %v", x.self, slices.Collect(maps.Keys(cm.Data)))
		}
		s, err := x.c.Client.CoreV1().Secrets(ns).Get(ctx, remotesSecretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var rc agentsync.RemoteConfig
		if err := yaml.Unmarshal(s.Data[x.name], &rc); err != nil || rc.TrustedCAFile != peerCAKey(x.name) ||
			rc.CertFile != peerCertKey(x.name) || rc.KeyFile != peerKeyKey(x.name) {
			t.Errorf("%s's config for %s: %+v %v", x.self, x.name, rc, err)
		}
		if got, err := parseCert(s.Data[peerCAKey(x.name)]); err != nil || !got.Equal(peerCA) {
			t.Errorf("%s's remotes secret: %s: %v", x.self, peerCAKey(x.name), err)
		}
		cert, err := parseCert(s.Data[peerCertKey(x.name)])
		pool := x509.NewCertPool()
		pool.AddCert(peerCA)
		if err != nil || cert.Subject.CommonName != "remote-"+x.self || ca.Verify(cert, pool, ca.ClientAuth, time.Now()) != nil {
			t.Errorf("%s's certificate for %s: %v (want remote-%s, signed by %s's CA)", x.self, x.name, err, x.self, x.name)
		}
	}
	// Again: nothing changes.
	before = map[string]map[string]string{"east": versions(t, east, ns), "west": versions(t, west, ns)}
	if out := kubeRun(t, env, "connect", "--context", "east", "--destination-context", "west", "--allow-mismatching-ca"); strings.Contains(out, "restarts") {
		t.Errorf("connect again:\n%s", out)
	}
	kubeRun(t, env, "enable", "--context", "west", "--cluster-name", "west", "--cluster-id", "2")
	if after := (map[string]map[string]string{"east": versions(t, east, ns), "west": versions(t, west, ns)}); !maps.Equal(before["east"], after["east"]) || !maps.Equal(before["west"], after["west"]) {
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
	for _, x := range []struct {
		c    *kubetest.Cluster
		peer string
	}{{east, "west"}, {west, "east"}} {
		s, err := x.c.Client.CoreV1().Secrets(ns).Get(ctx, remotesSecretName, metav1.GetOptions{})
		if err != nil || s.Data[peerCAKey(x.peer)] != nil || s.Data[peerCertKey(x.peer)] != nil || s.Data[peerKeyKey(x.peer)] != nil || s.Data[x.peer] != nil {
			t.Errorf("remotes after disconnect: %v %v", slices.Sorted(maps.Keys(s.Data)), err)
		}
	}
	testenv.WaitFor(t, 10*time.Second, "both agents drop their peer", func() bool {
		_, ok1 := ep.remoteStatus("west")
		_, ok2 := wp.remoteStatus("east")
		return !ok1 && !ok2
	})
}
