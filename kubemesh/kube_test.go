package kubemesh

import (
	"context"
	"crypto/x509"
	"net"
	"slices"
	"testing"

	"github.com/clustermesh/clustermesh/internal/kubetest"
)

// versions are the resource versions of everything enable manages.
func versions(t *testing.T, c *kubetest.Cluster, ns string) map[string]string {
	t.Helper()
	return c.ResourceVersions(context.Background(), ns, APIServerName, clusterRoleName(ns))
}

func secretCert(t *testing.T, c *kubetest.Cluster, ns, name, key string) *x509.Certificate {
	t.Helper()
	return c.SecretCert(t, ns, name, key)
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
