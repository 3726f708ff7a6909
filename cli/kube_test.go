package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/kubetest"
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
	ctx := context.Background()
	out := map[string]string{}
	add := func(kind string, m metav1.Object) { out[kind+"/"+m.GetName()] = m.GetResourceVersion() }
	core := c.Client.CoreV1()
	if l, err := core.Secrets(ns).List(ctx, metav1.ListOptions{}); err == nil {
		for i := range l.Items {
			add("secret", &l.Items[i])
		}
	}
	if l, err := core.ConfigMaps(ns).List(ctx, metav1.ListOptions{}); err == nil {
		for i := range l.Items {
			add("configmap", &l.Items[i])
		}
	}
	if l, err := core.Services(ns).List(ctx, metav1.ListOptions{}); err == nil {
		for i := range l.Items {
			add("service", &l.Items[i])
		}
	}
	if l, err := core.ServiceAccounts(ns).List(ctx, metav1.ListOptions{}); err == nil {
		for i := range l.Items {
			add("serviceaccount", &l.Items[i])
		}
	}
	if l, err := c.Client.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{}); err == nil {
		for i := range l.Items {
			add("deployment", &l.Items[i])
		}
	}
	if r, err := c.Client.RbacV1().Roles(ns).Get(ctx, apiserverName, metav1.GetOptions{}); err == nil {
		add("role", r)
	}
	if r, err := c.Client.RbacV1().RoleBindings(ns).Get(ctx, apiserverName, metav1.GetOptions{}); err == nil {
		add("rolebinding", r)
	}
	if r, err := c.Client.RbacV1().ClusterRoles().Get(ctx, clusterRoleName(ns), metav1.GetOptions{}); err == nil {
		add("clusterrole", r)
	}
	if r, err := c.Client.RbacV1().ClusterRoleBindings().Get(ctx, clusterRoleName(ns), metav1.GetOptions{}); err == nil {
		add("clusterrolebinding", r)
	}
	return out
}

func secretCert(t *testing.T, c *kubetest.Cluster, ns, name, key string) *x509.Certificate {
	t.Helper()
	s, err := c.Client.CoreV1().Secrets(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(s.Data[key])
	if b == nil {
		t.Fatalf("secret %s: no PEM in %s", name, key)
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func namesIP(cert *x509.Certificate, ip string) bool {
	return slices.ContainsFunc(cert.IPAddresses, net.ParseIP(ip).Equal)
}

// enable creates every object, a second run changes nothing, --dry-run
// writes nothing, a LoadBalancer address re-issues the server certificate,
// a second cluster shares the CA, a foreign CA is refused, and disable
// removes everything but the CA.
func TestK8sEnableDisable(t *testing.T) {
	env := kubetest.Start(t, "east", "west")
	east, west := env.Cluster("east"), env.Cluster("west")
	ctx := context.Background()
	ns := defaultKubeNamespace

	// --dry-run prints the objects and writes nothing.
	out := kubeRun(t, env, "enable", "--context", "east", "--cluster-name", "east", "--cluster-id", "1", "--dry-run")
	for _, want := range []string{"kind: Deployment", "kind: Service", "kind: ClusterRole", "name: " + serverSecretName,
		"--cluster-name=east", "--state-source=kubernetes", "type: LoadBalancer", "<private key, not shown>"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry-run output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "PRIVATE KEY-----") {
		t.Error("dry-run printed a private key")
	}
	if _, err := east.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("dry-run: namespace %s: %v, want not found", ns, err)
	}
	if v := versions(t, east, ns); len(v) != 0 {
		t.Fatalf("dry-run wrote %v", v)
	}

	// enable creates everything.
	out = kubeRun(t, env, "enable", "--context", "east", "--cluster-name", "east", "--cluster-id", "1")
	if got := strings.Count(out, " created"); got != 13 {
		t.Errorf("enable: %d objects created, want 13:\n%s", got, out)
	}
	first := versions(t, east, ns)
	for _, want := range []string{"secret/" + caSecretName, "secret/" + serverSecretName, "secret/" + adminSecretName, "secret/" + remoteSecretName,
		"configmap/" + meshConfigName, "service/" + apiserverName, "deployment/" + apiserverName, "serviceaccount/" + apiserverName,
		"clusterrole/" + apiserverName + "-" + ns, "clusterrolebinding/" + apiserverName + "-" + ns,
		"role/" + apiserverName, "rolebinding/" + apiserverName} {
		if _, ok := first[want]; !ok {
			t.Errorf("enable did not create %s (have %v)", want, first)
		}
	}
	dep, err := east.Client.AppsV1().Deployments(ns).Get(ctx, apiserverName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cmd := dep.Spec.Template.Spec.Containers[0].Command; !slices.Contains(cmd, "--cluster-id=1") || !slices.Contains(cmd, "--cluster-name=east") {
		t.Errorf("deployment command: %v", cmd)
	}
	svc, err := east.Client.CoreV1().Services(ns).Get(ctx, apiserverName, metav1.GetOptions{})
	if err != nil || svc.Spec.Type != corev1.ServiceTypeLoadBalancer || svc.Spec.Ports[0].Port != 2379 {
		t.Fatalf("service: %+v %v", svc, err)
	}
	caCert := secretCert(t, east, ns, caSecretName, "ca.crt")
	server := secretCert(t, east, ns, serverSecretName, corev1.TLSCertKey)
	if err := ca.Verify(server, pool(caCert), ca.ServerAuth, time.Now()); err != nil {
		t.Errorf("server certificate: %v", err)
	}
	if admin := secretCert(t, east, ns, adminSecretName, corev1.TLSCertKey); admin.Subject.CommonName != "admin-east" {
		t.Errorf("admin certificate CN %q", admin.Subject.CommonName)
	}
	if remote := secretCert(t, east, ns, remoteSecretName, corev1.TLSCertKey); remote.Subject.CommonName != "remote-east" {
		t.Errorf("remote certificate CN %q", remote.Subject.CommonName)
	}

	if !namesIP(server, svc.Spec.ClusterIP) {
		t.Errorf("server certificate does not name the cluster IP %s", svc.Spec.ClusterIP)
	}

	// The same again: nothing changes.
	second := versions(t, east, ns)
	out = kubeRun(t, env, "enable", "--context", "east", "--cluster-name", "east", "--cluster-id", "1")
	if got := strings.Count(out, " unchanged"); got != 13 {
		t.Errorf("second enable: %d objects unchanged, want 13:\n%s", got, out)
	}
	if third := versions(t, east, ns); !maps.Equal(second, third) {
		t.Errorf("enable again changed objects:\nbefore %v\nafter  %v", second, third)
	}
	// The cloud gives the service an address: enable re-issues the server
	// certificate for it and the deployment rolls; then nothing changes.
	if err := east.SetLoadBalancerIngress(ctx, ns, apiserverName, "192.0.2.10"); err != nil {
		t.Fatal(err)
	}
	out = kubeRun(t, env, "enable", "--context", "east", "--cluster-name", "east", "--cluster-id", "1")
	if !strings.Contains(out, "re-issuing "+serverSecretName) || !strings.Contains(out, "deployment/"+apiserverName+" configured") {
		t.Errorf("enable after the LoadBalancer address:\n%s", out)
	}
	if !namesIP(secretCert(t, east, ns, serverSecretName, corev1.TLSCertKey), "192.0.2.10") {
		t.Error("server certificate does not name the LoadBalancer address")
	}
	if !secretCert(t, east, ns, caSecretName, "ca.crt").Equal(caCert) {
		t.Error("the CA changed")
	}
	before := versions(t, east, ns)
	kubeRun(t, env, "enable", "--context", "east", "--cluster-name", "east", "--cluster-id", "1")
	if after := versions(t, east, ns); !maps.Equal(before, after) {
		t.Errorf("enable after re-issue changed objects:\nbefore %v\nafter  %v", before, after)
	}

	// A foreign CA for west: refused before anything is written... once
	// west has the mesh's CA.
	out = kubeRun(t, env, "enable", "--context", "west", "--cluster-name", "west", "--cluster-id", "2",
		"--ca-from-context", "east", "--service-type", "NodePort")
	if !strings.Contains(out, "NodePort") {
		t.Errorf("NodePort without a warning:\n%s", out)
	}
	if !secretCert(t, west, ns, caSecretName, "ca.crt").Equal(caCert) {
		t.Error("west does not share east's CA")
	}
	dir := t.TempDir()
	if _, err := run(ctx, "ca", "create", "--out", filepath.Join(dir, "other")); err != nil {
		t.Fatal(err)
	}
	before = versions(t, west, ns)
	err = kubeRunErr(t, env, "enable", "--context", "west", "--cluster-name", "west", "--cluster-id", "2", "--ca-dir", filepath.Join(dir, "other"))
	if !strings.Contains(err.Error(), "another mesh CA") || !strings.Contains(err.Error(), "disable --delete-ca") {
		t.Errorf("foreign CA: %v", err)
	}
	if after := versions(t, west, ns); !maps.Equal(before, after) {
		t.Errorf("a refused enable wrote:\nbefore %v\nafter  %v", before, after)
	}
	// Bad input is refused before any request.
	if err := kubeRunErr(t, env, "enable", "--context", "west", "--cluster-name", "West", "--cluster-id", "2"); !strings.Contains(err.Error(), "--cluster-name") {
		t.Errorf("bad name: %v", err)
	}
	if err := kubeRunErr(t, env, "enable", "--context", "west", "--cluster-name", "west", "--cluster-id", "300"); !strings.Contains(err.Error(), "--cluster-id") {
		t.Errorf("bad id: %v", err)
	}
	if err := kubeRunErr(t, env, "enable", "--context", "nowhere", "--cluster-name", "west", "--cluster-id", "2"); !strings.Contains(err.Error(), "no context") {
		t.Errorf("unknown context: %v", err)
	}

	// disable removes all but the CA, and is idempotent.
	out = kubeRun(t, env, "disable", "--context", "east")
	if got := strings.Count(out, " deleted"); got != 11 {
		t.Errorf("disable: %d deleted, want 11:\n%s", got, out)
	}
	if left := versions(t, east, ns); len(left) != 1 || left["secret/"+caSecretName] == "" {
		// The API server may leave the service account's token-less
		// remains; only the CA must stay.
		t.Errorf("after disable: %v, want only the CA", left)
	}
	out = kubeRun(t, env, "disable", "--context", "east", "--delete-ca")
	if !strings.Contains(out, "secret/"+caSecretName+" deleted") || strings.Contains(out, "deployment/"+apiserverName+" deleted") {
		t.Errorf("disable --delete-ca:\n%s", out)
	}
}

func pool(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

// The connection modes' directions, and the overlap checks on their own.
func TestKubeLinksAndOverlaps(t *testing.T) {
	a, b, c := &meshMember{name: "a"}, &meshMember{name: "b"}, &meshMember{name: "c"}
	for mode, want := range map[string]int{modeBidirectional: 4, modeUnicast: 2, modeMesh: 6} {
		ls, err := links(mode, a, []*meshMember{b, c})
		if err != nil || len(ls) != want {
			t.Errorf("%s: %d links, %v; want %d", mode, len(ls), err, want)
		}
	}
	p := func(s string) owned[netip.Prefix] { return owned[netip.Prefix]{netip.MustParsePrefix(s), "n"} }
	ip := func(s string) owned[netip.Addr] { return owned[netip.Addr]{netip.MustParseAddr(s), "n"} }
	a.podCIDRs, a.nodeIPs = []owned[netip.Prefix]{p("10.1.0.0/16"), p("fd00:1::/64")}, []owned[netip.Addr]{ip("192.168.0.1")}
	b.podCIDRs, b.nodeIPs = []owned[netip.Prefix]{p("10.2.0.0/16"), p("fd00:2::/64")}, []owned[netip.Addr]{ip("192.168.0.2")}
	if errs := overlaps(a, b); len(errs) != 0 {
		t.Errorf("disjoint clusters: %v", errs)
	}
	b.podCIDRs = append(b.podCIDRs, p("fd00:1::/48"))
	b.nodeIPs = append(b.nodeIPs, ip("10.1.2.3"))
	if errs := overlaps(a, b); len(errs) != 2 {
		t.Errorf("IPv6 pod CIDR overlap and a node IP in a pod CIDR: %v", errs)
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		return // in a pod: the in-cluster config would do
	}
	if _, err := newKubeStateSource("", "", nil); err == nil || !strings.Contains(err.Error(), "--kubeconfig") {
		t.Errorf("kubernetes source outside a pod without a kubeconfig: %v", err)
	}
}
