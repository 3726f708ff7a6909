package meshapiserver

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/wire"
)

// TestPeerCannotWriteOrHoldResources: with a real remote-west certificate,
// every request that writes or holds server resources is refused with
// PermissionDenied — etcd's own auth let it grant leases without limit —
// while reading, watching and the agents' read-only probe work, and the
// apiserver keeps publishing. Refusals are counted by method.
func TestPeerCannotWriteOrHoldResources(t *testing.T) {
	f := newFixture(t)
	f.start(t, "127.0.0.1:0")
	west := clientFor(t, f.srv.ClientURL(), f.west.RemoteCert(), f.west.RemoteKey(), f.west.CAFile())
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := get(t, west, wire.NodeKey("east", "east-1"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("remote-west reads a node: %v %v", resp, err)
	}
	published := clientv3.LeaseID(resp.Kvs[0].Lease)
	rev := resp.Header.Revision

	denied := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("%s as remote-west: %v, want permission denied", what, err)
		}
	}
	_, err = west.Grant(ctx, 60)
	denied("LeaseGrant", err)
	_, err = west.KeepAliveOnce(ctx, published)
	// The refusal ends the stream; when it lands before the client's send,
	// clientv3 reports the send's EOF, not the status (the refusal is
	// checked in the server's counts below either way).
	if !errors.Is(err, io.EOF) {
		denied("LeaseKeepAlive of the publisher's lease", err)
	}
	_, err = west.TimeToLive(ctx, published, clientv3.WithAttachedKeys())
	denied("LeaseTimeToLive", err)
	_, err = west.Leases(ctx)
	denied("LeaseLeases", err)
	_, err = west.Put(ctx, wire.NodeKey("east", "evil"), "{}")
	denied("Put", err)
	_, err = west.Txn(ctx).Then(clientv3.OpGet(wire.HeartbeatKey), clientv3.OpPut(wire.HeartbeatKey, "x")).Commit()
	denied("Txn with a put", err)
	_, err = west.Txn(ctx).Then(clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpDelete(wire.HeartbeatKey)}, nil)).Commit()
	denied("Txn with a nested delete", err)
	_, err = west.Delete(ctx, wire.StatePrefix, clientv3.WithPrefix())
	denied("DeleteRange", err)
	_, err = west.Compact(ctx, rev)
	denied("Compact", err)
	_, err = west.Defragment(ctx, f.srv.ClientURL())
	denied("Defragment", err)
	_, err = west.HashKV(ctx, f.srv.ClientURL(), 0)
	denied("HashKV", err)
	_, err = west.AlarmDisarm(ctx, &clientv3.AlarmMember{})
	denied("AlarmDisarm", err)
	_, err = west.MemberAdd(ctx, []string{"http://127.0.0.1:1"})
	denied("MemberAdd", err)
	_, err = west.UserAdd(ctx, "intruder", "password")
	denied("UserAdd", err)
	_, err = west.Authenticate(ctx, "root", "guess")
	denied("Authenticate", err)
	_, err = west.Revoke(ctx, published)
	denied("LeaseRevoke of the publisher's lease", err)

	// Reading works: Range, the agents' read-only probe, Status, Watch.
	if _, err := west.Txn(ctx).Then(clientv3.OpGet(wire.HeartbeatKey), clientv3.OpGet(wire.ClusterConfigKey("east"))).Commit(); err != nil {
		t.Errorf("read-only Txn as remote-west: %v", err)
	}
	if _, err := west.Status(ctx, f.srv.ClientURL()); err != nil {
		t.Errorf("Status as remote-west: %v", err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	w := west.Watch(wctx, wire.IPCache.ListPrefix("east"), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	// The admin publisher still writes: cart-a leaves.
	writeFile(t, f.state, strings.Replace(eastState, "- {namespace: shop, pod: cart-a, ip: 10.1.1.12, node: east-1, labels: {app: cart}}\n", "", 1))
	select {
	case wr := <-w:
		if err := wr.Err(); err != nil || len(wr.Events) == 0 || string(wr.Events[0].Kv.Key) != wire.IPCacheKey("10.1.1.12") || wr.Events[0].Type != clientv3.EventTypeDelete {
			t.Errorf("watch as remote-west: %v %v", wr.Events, err)
		}
	case <-ctx.Done():
		t.Fatal("remote-west saw no change published")
	}
	// Entries are all still there, on the publisher's lease.
	if resp, err := get(t, admin, wire.NodeKey("east", "east-1")); err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease != int64(published) {
		t.Errorf("node entry after the peer's attempts: %v %v", resp, err)
	}
	// The admin may do what the peer may not.
	if _, err := admin.Grant(ctx, 60); err != nil {
		t.Errorf("LeaseGrant as admin: %v", err)
	}

	st := f.srv.Status()
	for _, m := range []string{"/etcdserverpb.Lease/LeaseGrant", "/etcdserverpb.Lease/LeaseKeepAlive", "/etcdserverpb.KV/Put", "/etcdserverpb.KV/Txn", "/etcdserverpb.KV/Compact"} {
		if st.Denied[m] == 0 {
			t.Errorf("no refusal of %s counted: %v", m, st.Denied)
		}
	}
	if got := gather(t, f.srv)["clustermesh_apiserver_requests_denied_total"]; got < 16 {
		t.Errorf("clustermesh_apiserver_requests_denied_total = %v, want the 16 refusals", got)
	}
}

// TestForeignCACannotMintAnAdmin: a further trusted CA (a peer's, with
// connect --allow-mismatching-ca in an earlier version) can issue a
// certificate named admin-<cluster> or root. etcd takes it for that user;
// the apiserver refuses it every write.
func TestForeignCACannotMintAnAdmin(t *testing.T) {
	f := newFixture(t)
	other, err := ca.New("a peer's CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherDir := filepath.Join(f.dir, "other-ca")
	if err := other.Save(otherDir); err != nil {
		t.Fatal(err)
	}
	f.trustedCAs = []string{filepath.Join(otherDir, ca.CertFile)}
	f.start(t, "127.0.0.1:0")
	pool, err := ca.LoadPool(f.east.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, user := range []string{AdminUser("east"), rootUser} {
		issued, err := other.IssueClient(user)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(issued.CertPEM, issued.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		forged := client(t, f.srv.ClientURL(), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		if _, err := forged.Put(ctx, wire.NodeKey("east", "evil"), "{}"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("put as %s of another CA: %v, want permission denied", user, err)
		}
		if _, err := forged.Grant(ctx, 60); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("lease grant as %s of another CA: %v, want permission denied", user, err)
		}
	}
	// The apiserver's own admin (of the mesh CA) still publishes.
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	if _, err := admin.Put(ctx, "cilium/admin-test", "x"); err != nil {
		t.Errorf("put as the mesh CA's admin-east: %v", err)
	}
}
