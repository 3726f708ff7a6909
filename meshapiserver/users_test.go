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
	f.stop(t)

	f.ciliumRemote = false
	f.start(t, url)
	if _, err := get(t, f.ciliumRemoteClient(t), wire.HeartbeatKey, clientv3.WithPrefix()); err == nil {
		t.Error("remote could still read after a start without the option")
	}
}
