package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/kubemesh"
)

// The names of the objects enable, connect and the apiserver write, and of
// the keys of the mesh config and remotes secret, as the tests read them.
const (
	apiserverName     = kubemesh.APIServerName
	caSecretName      = kubemesh.CASecretName
	serverSecretName  = kubemesh.ServerSecretName
	adminSecretName   = kubemesh.AdminSecretName
	meshConfigName    = kubemesh.MeshConfigName
	remotesSecretName = kubemesh.RemotesSecretName
	trustedCAsName    = kubemesh.TrustedCAsName
	cfgClusterName    = "cluster-name"
	cfgClusterID      = "cluster-id"
	cfgPeers          = "peers"
	remotesCertKey    = ".remote.crt"
)

// kubeRun runs a clustermesh command against env's kubeconfig and fails t
// when it fails.
func kubeRun(t *testing.T, env *kubetest.Env, args ...string) string {
	t.Helper()
	out, err := run(context.Background(), append(args, "--kubeconfig", env.Kubeconfig)...)
	if err != nil {
		t.Fatalf("clustermesh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// kubeRunErr runs a command that must fail and returns its error.
func kubeRunErr(t *testing.T, env *kubetest.Env, args ...string) error {
	t.Helper()
	out, err := run(context.Background(), append(args, "--kubeconfig", env.Kubeconfig)...)
	if err == nil {
		t.Fatalf("clustermesh %s succeeded, want an error\n%s", strings.Join(args, " "), out)
	}
	return err
}

// versions are the resource versions of everything enable manages.
func versions(t *testing.T, c *kubetest.Cluster, ns string) map[string]string {
	t.Helper()
	return c.ResourceVersions(context.Background(), ns, apiserverName, apiserverName+"-"+ns)
}

func secretCert(t *testing.T, c *kubetest.Cluster, ns, name, key string) *x509.Certificate {
	t.Helper()
	return c.SecretCert(t, ns, name, key)
}

func namesIP(cert *x509.Certificate, ip string) bool {
	return slices.ContainsFunc(cert.IPAddresses, net.ParseIP(ip).Equal)
}

func parseCert(p []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(p)
	if b == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// The apiserver keeps its identities where enable gives it the right to.
func TestKubeIdentitiesConfigMapName(t *testing.T) {
	if identitiesConfigMap != kubemesh.IdentitiesConfigMap {
		t.Errorf("apiserver's configmap %q, enable's role names %q", identitiesConfigMap, kubemesh.IdentitiesConfigMap)
	}
}

func TestKubeStateSourceOutsidePod(t *testing.T) {
	if os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		t.Skip("in a pod: the in-cluster config would do")
	}
	if _, err := newKubeStateSource("", "", nil); err == nil || !strings.Contains(err.Error(), "--kubeconfig") {
		t.Errorf("kubernetes source outside a pod without a kubeconfig: %v", err)
	}
}

// enable prints each object changed, the certificates re-issued and the
// notes; a dry run, the objects as YAML without their private keys.
func TestKubeEnablePrint(t *testing.T) {
	o := kubemesh.EnableOptions{ClusterName: "east", ClusterID: 1}
	res := kubemesh.EnableResult{Context: "east", Namespace: "mesh", NewCA: true,
		Objects:  []kubemesh.ObjectChange{{Kind: "namespace", Name: "mesh", Action: kubemesh.Created}, {Kind: "deployment", Namespace: "mesh", Name: apiserverName, Action: kubemesh.Configured}},
		Reissued: []kubemesh.Reissue{{Secret: serverSecretName, Reason: "does not name 192.0.2.10"}},
		Warnings: []string{"NodePort: peers' agents dial a node IP"}}
	var out, errOut strings.Builder
	if err := printEnable(&out, &errOut, o, res, true); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"namespace/mesh created\n", "deployment/" + apiserverName + " configured\n", "cluster east (id 1) enabled in context east, namespace mesh"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("out lacks %q:\n%s", want, out.String())
		}
	}
	for _, want := range []string{"re-issuing " + serverSecretName + ": does not name 192.0.2.10", "created a new mesh CA in secret mesh/" + caSecretName, "warning: NodePort"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("errOut lacks %q:\n%s", want, errOut.String())
		}
	}
	// A failed enable prints what it did, and no more.
	out.Reset()
	if err := printEnable(&out, io.Discard, o, res, false); err != nil || strings.Contains(out.String(), "enabled") || !strings.Contains(out.String(), "namespace/mesh created") {
		t.Errorf("failed enable: %v\n%s", err, out.String())
	}

	o.DryRun = true
	secret := &corev1.Secret{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"}, ObjectMeta: metav1.ObjectMeta{Name: caSecretName, Namespace: "mesh"},
		Data: map[string][]byte{"ca.crt": []byte("CERT"), "ca.key": []byte("-----BEGIN PRIVATE KEY-----")}}
	out.Reset()
	if err := printEnable(&out, io.Discard, o, kubemesh.EnableResult{Context: "east", Planned: []runtime.Object{secret}}, true); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "# clustermesh enable --dry-run: context east, cluster east (id 1); nothing was written") ||
		!strings.Contains(s, "name: "+caSecretName) || !strings.Contains(s, "<private key, not shown>") || strings.Contains(s, "PRIVATE KEY-----") {
		t.Errorf("dry run:\n%s", s)
	}
}
