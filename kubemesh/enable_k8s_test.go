package kubemesh

import (
	"bytes"
	"context"
	"crypto/x509"
	"maps"
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

// enable creates every object, a second run changes nothing, a dry run
// writes nothing, a LoadBalancer address re-issues the server certificate,
// a second cluster shares the CA, a foreign CA is refused, and disable
// removes everything but the CA.
func TestK8sEnableDisable(t *testing.T) {
	env := kubetest.Start(t, "east", "west")
	east, west := env.Cluster("east"), env.Cluster("west")
	ctx := context.Background()
	ns := DefaultNamespace
	enable := func(o EnableOptions) EnableResult {
		t.Helper()
		o.Kubeconfig = env.Kubeconfig
		res, err := Enable(ctx, o)
		if err != nil {
			t.Fatalf("enable %+v: %v", o, err)
		}
		return res
	}
	eastOpts := EnableOptions{Context: "east", ClusterName: "east", ClusterID: 1}

	checkDryRun(t, env, eastOpts)
	res := enable(eastOpts)
	if got := count(res.Objects, Created); got != 15 || !res.NewCA || res.Context != "east" { // 13 and the MCS API's two CRDs
		t.Errorf("enable: %d objects created, want 15; new CA %v:\n%+v", got, res.NewCA, res.Objects)
	}
	caCert := checkEnabled(t, east, ns)
	// The same again: nothing changes.
	before := versions(t, east, ns)
	if res := enable(eastOpts); count(res.Objects, Unchanged) != 15 || res.NewCA || len(res.Reissued) != 0 {
		t.Errorf("second enable: %d objects unchanged, want 15; new CA %v; reissued %v", count(res.Objects, Unchanged), res.NewCA, res.Reissued)
	}
	if after := versions(t, east, ns); !maps.Equal(before, after) {
		t.Errorf("enable again changed objects:\nbefore %v\nafter  %v", before, after)
	}
	// The cloud gives the service an address: enable re-issues the server
	// certificate for it and the deployment rolls; then nothing changes.
	if err := east.SetLoadBalancerIngress(ctx, ns, APIServerName, "192.0.2.10"); err != nil {
		t.Fatal(err)
	}
	res = enable(eastOpts)
	if len(res.Reissued) != 1 || res.Reissued[0].Secret != ServerSecretName || !has(res.Objects, "deployment", APIServerName, Configured) {
		t.Errorf("enable after the LoadBalancer address: reissued %v, objects %+v", res.Reissued, res.Objects)
	}
	if !namesIP(secretCert(t, east, ns, ServerSecretName, corev1.TLSCertKey), "192.0.2.10") {
		t.Error("server certificate does not name the LoadBalancer address")
	}
	if !secretCert(t, east, ns, CASecretName, "ca.crt").Equal(caCert) {
		t.Error("the CA changed")
	}
	before = versions(t, east, ns)
	enable(eastOpts)
	if after := versions(t, east, ns); !maps.Equal(before, after) {
		t.Errorf("enable after re-issue changed objects:\nbefore %v\nafter  %v", before, after)
	}

	// west takes east's CA, with a NodePort; a foreign CA is then refused.
	res = enable(EnableOptions{Context: "west", ClusterName: "west", ClusterID: 2, CAFromContext: "east", ServiceType: "NodePort"})
	if res.NewCA || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "NodePort") {
		t.Errorf("west: new CA %v, warnings %q", res.NewCA, res.Warnings)
	}
	if !secretCert(t, west, ns, CASecretName, "ca.crt").Equal(caCert) {
		t.Error("west does not share east's CA")
	}
	checkRefused(t, env, west)
	checkDisable(t, env, east)
}

// checkDryRun: a dry run plans every object, redacts the keys in YAML and
// writes nothing.
func checkDryRun(t *testing.T, env *kubetest.Env, o EnableOptions) {
	t.Helper()
	o.Kubeconfig, o.DryRun = env.Kubeconfig, true
	res, err := Enable(context.Background(), o)
	if err != nil || len(res.Objects) != 0 || len(res.Planned) != 15 { // with the MCS API's two CRDs
		t.Fatalf("dry run: %v, %d applied, %d planned", err, len(res.Objects), len(res.Planned))
	}
	var out bytes.Buffer
	if err := WriteYAML(&out, true, res.Planned...); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kind: Deployment", "kind: Service", "kind: ClusterRole", "name: " + ServerSecretName,
		"--cluster-name=east", "--state-source=kubernetes", "type: LoadBalancer", "<private key, not shown>"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("dry-run YAML lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "PRIVATE KEY-----") {
		t.Error("dry-run YAML holds a private key")
	}
	c := env.Cluster(o.Context)
	if _, err := c.Client.CoreV1().Namespaces().Get(context.Background(), DefaultNamespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("dry run: namespace %s: %v, want not found", DefaultNamespace, err)
	}
	if v := versions(t, c, DefaultNamespace); len(v) != 0 {
		t.Fatalf("dry run wrote %v", v)
	}
}

// checkEnabled checks every object of east's apiserver, and returns its CA.
func checkEnabled(t *testing.T, east *kubetest.Cluster, ns string) *x509.Certificate {
	t.Helper()
	ctx := context.Background()
	first := versions(t, east, ns)
	for _, want := range []string{"secret/" + CASecretName, "secret/" + ServerSecretName, "secret/" + AdminSecretName, "secret/" + RemoteSecretName,
		"configmap/" + MeshConfigName, "service/" + APIServerName, "deployment/" + APIServerName, "serviceaccount/" + APIServerName,
		"clusterrole/" + APIServerName + "-" + ns, "clusterrolebinding/" + APIServerName + "-" + ns,
		"role/" + APIServerName, "rolebinding/" + APIServerName} {
		if _, ok := first[want]; !ok {
			t.Errorf("enable did not create %s (have %v)", want, first)
		}
	}
	dep, err := east.Client.AppsV1().Deployments(ns).Get(ctx, APIServerName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cmd := dep.Spec.Template.Spec.Containers[0].Command; !slices.Contains(cmd, "--cluster-id=1") || !slices.Contains(cmd, "--cluster-name=east") {
		t.Errorf("deployment command: %v", cmd)
	}
	svc, err := east.Client.CoreV1().Services(ns).Get(ctx, APIServerName, metav1.GetOptions{})
	if err != nil || svc.Spec.Type != corev1.ServiceTypeLoadBalancer || svc.Spec.Ports[0].Port != 2379 {
		t.Fatalf("service: %+v %v", svc, err)
	}
	caCert := secretCert(t, east, ns, CASecretName, "ca.crt")
	server := secretCert(t, east, ns, ServerSecretName, corev1.TLSCertKey)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	if err := ca.Verify(server, pool, ca.ServerAuth, time.Now()); err != nil {
		t.Errorf("server certificate: %v", err)
	}
	if admin := secretCert(t, east, ns, AdminSecretName, corev1.TLSCertKey); admin.Subject.CommonName != "admin-east" {
		t.Errorf("admin certificate CN %q", admin.Subject.CommonName)
	}
	if remote := secretCert(t, east, ns, RemoteSecretName, corev1.TLSCertKey); remote.Subject.CommonName != "remote-east" {
		t.Errorf("remote certificate CN %q", remote.Subject.CommonName)
	}
	if !namesIP(server, svc.Spec.ClusterIP) {
		t.Errorf("server certificate does not name the cluster IP %s", svc.Spec.ClusterIP)
	}
	return caCert
}

// checkRefused: another CA for west is refused before anything is written,
// and so is bad input, before any request.
func checkRefused(t *testing.T, env *kubetest.Env, west *kubetest.Cluster) {
	t.Helper()
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "other")
	other, err := ca.New("other CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Save(dir); err != nil {
		t.Fatal(err)
	}
	before := versions(t, west, DefaultNamespace)
	_, err = Enable(ctx, EnableOptions{Kubeconfig: env.Kubeconfig, Context: "west", ClusterName: "west", ClusterID: 2, CADir: dir})
	if err == nil || !strings.Contains(err.Error(), "another mesh CA") || !strings.Contains(err.Error(), "disable --delete-ca") {
		t.Errorf("foreign CA: %v", err)
	}
	if after := versions(t, west, DefaultNamespace); !maps.Equal(before, after) {
		t.Errorf("a refused enable wrote:\nbefore %v\nafter  %v", before, after)
	}
	for _, tc := range []struct {
		o    EnableOptions
		want string
	}{
		{EnableOptions{Context: "west", ClusterName: "West", ClusterID: 2}, "--cluster-name"},
		{EnableOptions{Context: "west", ClusterName: "west", ClusterID: 300}, "--cluster-id"},
		{EnableOptions{Context: "west", ClusterName: "west", ClusterID: 2, ServiceType: "ClusterIP"}, "--service-type"},
		{EnableOptions{Context: "west", ClusterName: "west", ClusterID: 2, ServerIPs: []string{"mesh.example"}}, "--server-ip"},
		{EnableOptions{Context: "nowhere", ClusterName: "west", ClusterID: 2}, "no context"},
	} {
		tc.o.Kubeconfig = env.Kubeconfig
		if _, err := Enable(ctx, tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.o, err, tc.want)
		}
	}
}

// checkDisable: disable removes all but the CA and is idempotent; with
// DeleteCA the CA goes too.
func checkDisable(t *testing.T, env *kubetest.Env, east *kubetest.Cluster) {
	t.Helper()
	ctx := context.Background()
	res, err := Disable(ctx, DisableOptions{Kubeconfig: env.Kubeconfig, Context: "east"})
	if err != nil || count(res.Objects, Deleted) != 11 {
		t.Errorf("disable: %v, %d deleted, want 11:\n%+v", err, count(res.Objects, Deleted), res.Objects)
	}
	if left := versions(t, east, DefaultNamespace); len(left) != 1 || left["secret/"+CASecretName] == "" {
		t.Errorf("after disable: %v, want only the CA", left)
	}
	res, err = Disable(ctx, DisableOptions{Kubeconfig: env.Kubeconfig, Context: "east", DeleteCA: true})
	if err != nil || !has(res.Objects, "secret", CASecretName, Deleted) || !has(res.Objects, "deployment", APIServerName, NotFound) {
		t.Errorf("disable with DeleteCA: %v\n%+v", err, res.Objects)
	}
}
