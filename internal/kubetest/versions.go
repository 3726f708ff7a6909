package kubetest

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ResourceVersions returns the resource version of every object a mesh's
// enable manages in namespace ns — secrets, configmaps, services, service
// accounts, deployments, and the Role, RoleBinding (named role) and
// ClusterRole, ClusterRoleBinding (named clusterRole) — keyed by kind/name:
// a test compares two of them to check that a command changed nothing.
func (c *Cluster) ResourceVersions(ctx context.Context, ns, role, clusterRole string) map[string]string {
	out := map[string]string{}
	add := func(kind string, m metav1.Object) { out[kind+"/"+m.GetName()] = m.GetResourceVersion() }
	core, list := c.Client.CoreV1(), metav1.ListOptions{}
	if l, err := core.Secrets(ns).List(ctx, list); err == nil {
		for i := range l.Items {
			add("secret", &l.Items[i])
		}
	}
	if l, err := core.ConfigMaps(ns).List(ctx, list); err == nil {
		for i := range l.Items {
			add("configmap", &l.Items[i])
		}
	}
	if l, err := core.Services(ns).List(ctx, list); err == nil {
		for i := range l.Items {
			add("service", &l.Items[i])
		}
	}
	if l, err := core.ServiceAccounts(ns).List(ctx, list); err == nil {
		for i := range l.Items {
			add("serviceaccount", &l.Items[i])
		}
	}
	if l, err := c.Client.AppsV1().Deployments(ns).List(ctx, list); err == nil {
		for i := range l.Items {
			add("deployment", &l.Items[i])
		}
	}
	rbac, get := c.Client.RbacV1(), metav1.GetOptions{}
	if r, err := rbac.Roles(ns).Get(ctx, role, get); err == nil {
		add("role", r)
	}
	if r, err := rbac.RoleBindings(ns).Get(ctx, role, get); err == nil {
		add("rolebinding", r)
	}
	if r, err := rbac.ClusterRoles().Get(ctx, clusterRole, get); err == nil {
		add("clusterrole", r)
	}
	if r, err := rbac.ClusterRoleBindings().Get(ctx, clusterRole, get); err == nil {
		add("clusterrolebinding", r)
	}
	return out
}

// SecretCert returns the certificate in key of secret ns/name, failing t if
// there is none.
func (c *Cluster) SecretCert(t testing.TB, ns, name, key string) *x509.Certificate {
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
