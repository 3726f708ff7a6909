package meshapiserver

import (
	"testing"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/etcdtest"
)

// startEtcdCluster starts a real three-member etcd cluster set up as
// docs/external-etcd.md asks of an operator's (internal/etcdtest): the
// members' client certificate is bundle's server one, auth is on with
// root and admin-<cluster>, the transaction limits are the publisher's
// minimums, no more.
func startEtcdCluster(t *testing.T, mesh *ca.CA, bundle ca.Bundle) *etcdtest.Cluster {
	t.Helper()
	return etcdtest.Start(t, etcdtest.Config{
		CA: mesh, CAFile: bundle.CAFile(), ServerCert: bundle.ServerCert(), ServerKey: bundle.ServerKey(),
		RootUsers: []string{AdminUser(bundle.Cluster)},
		MaxTxnOps: ExternalEtcdMinTxnOps, MaxRequestBytes: ExternalEtcdMinRequestBytes,
	})
}
