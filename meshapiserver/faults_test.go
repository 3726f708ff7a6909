package meshapiserver

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/wire"
)

// rootClient connects as etcd's root user, with a certificate of the mesh
// CA (what an operator with the CA key could do).
func (f *fixture) rootClient(t *testing.T) *clientv3.Client {
	t.Helper()
	return f.userClient(t, rootUser)
}

// userClient connects as etcd user name, with a certificate of the mesh CA
// issued for it.
func (f *fixture) userClient(t *testing.T, name string) *clientv3.Client {
	t.Helper()
	issued, err := f.mesh.IssueClient(name)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(f.dir, "user-"+name)
	if err := issued.Save(dir, name); err != nil {
		t.Fatal(err)
	}
	return clientFor(t, f.srv.ClientURL(), filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), f.east.CAFile())
}

// TestPublishResumesAfterTransientFailure: while the store refuses the
// apiserver's writes (its user loses its role), a change cannot be
// published; the apiserver keeps running, reports the failure in its
// status and metrics, retries, and publishes the change once the store
// takes writes again.
func TestPublishResumesAfterTransientFailure(t *testing.T) {
	f := newFixture(t)
	f.start(t, "127.0.0.1:0")
	root := f.rootClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := root.UserRevokeRole(ctx, AdminUser("east"), rootRole); err != nil {
		t.Fatal(err)
	}
	// cart-a leaves.
	writeFile(t, f.state, strings.Replace(eastState, "- {namespace: shop, pod: cart-a, ip: 10.1.1.12, node: east-1, labels: {app: cart}}\n", "", 1))
	testenv.WaitFor(t, 10*time.Second, "the failed publish reported", func() bool {
		f.running(t)
		st := f.srv.Status()
		return st.PublishFailures >= 2 && strings.Contains(st.PublishError, "permission denied")
	})
	m := gather(t, f.srv)
	if m["clustermesh_apiserver_publish_failing"] != 1 || m["clustermesh_apiserver_publish_failures_total"] < 2 {
		t.Errorf("metrics while failing: failing %v, failures %v", m["clustermesh_apiserver_publish_failing"], m["clustermesh_apiserver_publish_failures_total"])
	}
	if resp, err := get(t, root, wire.IPCacheKey("10.1.1.12")); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("10.1.1.12 while the store refuses writes: %v %v", resp, err)
	}

	if _, err := root.UserGrantRole(ctx, AdminUser("east"), rootRole); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 40*time.Second, "10.1.1.12 removed once the store takes writes", func() bool {
		f.running(t)
		resp, err := get(t, root, wire.IPCacheKey("10.1.1.12"))
		return err == nil && len(resp.Kvs) == 0
	})
	testenv.WaitFor(t, 10*time.Second, "the failure cleared", func() bool { return f.srv.Status().PublishError == "" })
	if m := gather(t, f.srv); m["clustermesh_apiserver_publish_failing"] != 0 {
		t.Errorf("publish_failing = %v after recovery", m["clustermesh_apiserver_publish_failing"])
	}
}

// TestRepublishesAfterLosingTheLease: the lease every entry is on goes (an
// admin revokes it; it would also expire if the apiserver could not keep it
// alive for its TTL), and every entry with it. The apiserver keeps running,
// takes another lease and writes everything again, canaries and the cluster
// config included.
func TestRepublishesAfterLosingTheLease(t *testing.T) {
	f := newFixture(t)
	f.leaseTTL = 10 * time.Second
	f.start(t, "127.0.0.1:0")
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	resp, err := get(t, admin, wire.StatePrefix, clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 7 {
		t.Fatalf("published: %v %v", resp, err)
	}
	lost := clientv3.LeaseID(resp.Kvs[0].Lease)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := admin.Revoke(ctx, lost); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 20*time.Second, "every entry and canary written again on a new lease", func() bool {
		f.running(t)
		resp, err := get(t, admin, "cilium/", clientv3.WithPrefix())
		if err != nil {
			return false
		}
		state, canaries, config := 0, 0, 0
		for _, kv := range resp.Kvs {
			if kv.Lease == int64(lost) {
				return false
			}
			switch {
			case strings.HasPrefix(string(kv.Key), wire.StatePrefix):
				state++
			case strings.HasPrefix(string(kv.Key), wire.SyncedPrefix):
				canaries++
			case string(kv.Key) == wire.ClusterConfigKey("east") && kv.Lease != 0:
				config++
			}
		}
		return state == 7 && canaries == len(wire.PublishedKinds) && config == 1
	})
	if st := f.srv.Status(); st.LeaseRenewals != 1 {
		t.Errorf("lease renewals %d, want 1", st.LeaseRenewals)
	}
}

// TestCompactsHistory: etcd keeps every superseded revision unless told to
// compact; a long-running apiserver with churn would fill its 2 GiB quota,
// after which etcd refuses every write. Old revisions are compacted after
// the retention.
func TestCompactsHistory(t *testing.T) {
	f := newFixture(t)
	f.historyRetention = time.Second
	f.start(t, "127.0.0.1:0")
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	resp, err := get(t, admin, wire.HeartbeatKey)
	if err != nil {
		t.Fatal(err)
	}
	old := resp.Header.Revision
	writeFile(t, f.state, strings.Replace(eastState, "- {namespace: shop, pod: cart-a, ip: 10.1.1.12, node: east-1, labels: {app: cart}}\n", "", 1))
	testenv.WaitFor(t, 20*time.Second, fmt.Sprintf("revision %d compacted", old), func() bool {
		f.running(t)
		_, err := get(t, admin, wire.HeartbeatKey, clientv3.WithRev(old))
		return errors.Is(err, rpctypes.ErrCompacted)
	})
}
