package kubemesh

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net"
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/kubetest"
)

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
	rbac := c.Client.RbacV1()
	if r, err := rbac.Roles(ns).Get(ctx, APIServerName, metav1.GetOptions{}); err == nil {
		add("role", r)
	}
	if r, err := rbac.RoleBindings(ns).Get(ctx, APIServerName, metav1.GetOptions{}); err == nil {
		add("rolebinding", r)
	}
	if r, err := rbac.ClusterRoles().Get(ctx, clusterRoleName(ns), metav1.GetOptions{}); err == nil {
		add("clusterrole", r)
	}
	if r, err := rbac.ClusterRoleBindings().Get(ctx, clusterRoleName(ns), metav1.GetOptions{}); err == nil {
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

// count counts the changes of an action.
func count(changes []ObjectChange, a Action) int {
	n := 0
	for _, c := range changes {
		if c.Action == a {
			n++
		}
	}
	return n
}

// has reports whether changes hold kind/name with action a.
func has(changes []ObjectChange, kind, name string, a Action) bool {
	return slices.ContainsFunc(changes, func(c ObjectChange) bool { return c.Kind == kind && c.Name == name && c.Action == a })
}
