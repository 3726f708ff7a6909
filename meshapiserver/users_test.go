package meshapiserver

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/wire"
)

// ciliumRemoteClient connects with a mesh-CA client certificate named
// remote, as a Cilium agent of any peer does.
func (f *fixture) ciliumRemoteClient(t *testing.T) *clientv3.Client {
	t.Helper()
	return f.userClient(t, CiliumRemoteUser)
}

// TestCiliumRemoteUserIsOptIn: the shared user remote Cilium agents log in
// as reads only with Config.CiliumRemoteUser, cannot write, and is removed
// again by a start without the option.
func TestCiliumRemoteUserIsOptIn(t *testing.T) {
	f := newFixture(t)
	f.dataDir = filepath.Join(f.dir, "etcd")
	f.start(t, "127.0.0.1:0")
	url := strings.TrimPrefix(f.srv.ClientURL(), "https://")
	if _, err := get(t, f.ciliumRemoteClient(t), wire.HeartbeatKey, clientv3.WithPrefix()); err == nil {
		t.Error("remote could read without the option")
	}
	f.stop(t)

	f.ciliumRemote = true
	f.start(t, url)
	remote := f.ciliumRemoteClient(t)
	if resp, err := get(t, remote, wire.HeartbeatKey, clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 1 {
		t.Errorf("heartbeat as remote: %v %v", resp, err)
	}
	if resp, err := get(t, remote, wire.ClusterConfigKey("east")); err != nil || len(resp.Kvs) != 1 {
		t.Errorf("cluster config as remote: %v %v", resp, err)
	}
	if resp, err := get(t, remote, wire.IPCache.ListPrefix("east"), clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 3 {
		t.Errorf("ipcache as remote: %v %v", resp, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, key := range []string{wire.HeartbeatKey, wire.ClusterConfigKey("east"), wire.NodeKey("east", "evil"), "anything"} {
		if _, err := remote.Put(ctx, key, "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("put %s as remote: %v, want permission denied", key, err)
		}
	}
	// The per-peer user is still there.
	west := clientFor(t, f.srv.ClientURL(), f.west.RemoteCert(), f.west.RemoteKey(), f.west.CAFile())
	if _, err := get(t, west, wire.HeartbeatKey); err != nil {
		t.Errorf("remote-west: %v", err)
	}
	// Neither reads the local view, the cluster's own user does; a peer
	// given its role (by hand) loses it on the next start.
	for name, cli := range map[string]*clientv3.Client{"remote": remote, "remote-west": west} {
		if _, err := get(t, cli, wire.LocalViewPrefix, clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("%s reading the local view: %v, want permission denied", name, err)
		}
	}
	if _, err := get(t, f.userClient(t, RemoteUser("east")), wire.LocalViewPrefix, clientv3.WithPrefix()); err != nil {
		t.Errorf("remote-east reading the local view: %v", err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if _, err := f.rootClient(t).UserGrantRole(ctx2, RemoteUser("west"), localViewRole); err != nil {
		t.Fatal(err)
	}
	f.stop(t)
	f.start(t, url)
	west = clientFor(t, f.srv.ClientURL(), f.west.RemoteCert(), f.west.RemoteKey(), f.west.CAFile())
	if _, err := get(t, west, wire.LocalViewPrefix, clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("remote-west given the local view's role, after a restart: %v, want permission denied", err)
	}
	f.stop(t)

	f.ciliumRemote = false
	f.start(t, url)
	if _, err := get(t, f.ciliumRemoteClient(t), wire.HeartbeatKey, clientv3.WithPrefix()); err == nil {
		t.Error("remote could still read after a start without the option")
	}
}
