package meshapiserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// etcdServer is the embedded etcd of one cluster's mesh apiserver. It serves
// clients only over TLS with a client certificate from the mesh CA, every
// request a non-admin must not make refused (requestGuard).
//
// The store is ephemeral by design: everything in it is re-derived from the
// state source, so it runs without fsync and, unless a data directory is
// given, in a temporary directory removed on close.
type etcdServer struct {
	etcd    *embed.Etcd
	dataDir string
	ownDir  bool // dataDir was created here and is removed on close
	url     string
}

// startEtcd starts the embedded etcd and waits until it serves.
func startEtcd(ctx context.Context, cfg *Config, guard *requestGuard) (*etcdServer, error) {
	dir, own := cfg.DataDir, false
	if dir == "" {
		d, err := os.MkdirTemp("", "clustermesh-etcd-"+cfg.ClusterName+"-")
		if err != nil {
			return nil, fmt.Errorf("meshapiserver: etcd data dir: %w", err)
		}
		dir, own = d, true
	}
	ec := embed.NewConfig()
	ec.Name = cfg.ClusterName
	ec.Dir = dir
	ec.UnsafeNoFsync = true
	ec.TickMs, ec.ElectionMs = 10, 100
	ec.MaxTxnOps = maxTxnOps
	ec.MaxRequestBytes = maxRequestBytes
	ec.EnableGRPCGateway = false
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ec.AuthToken = "simple"
	ec.GRPCAdditionalServerOptions = guard.serverOptions()

	clientURL := url.URL{Scheme: "https", Host: cfg.ListenAddress}
	peerURL := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	ec.ListenClientUrls = []url.URL{clientURL}
	ec.AdvertiseClientUrls = []url.URL{clientURL}
	ec.ListenPeerUrls = []url.URL{peerURL}
	ec.AdvertisePeerUrls = []url.URL{peerURL}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	// etcd derives its cluster id from the peer URLs and this token. A fresh
	// token per store makes every store's id unique, so agents notice a
	// restarted (empty) store or another replica behind a load balancer
	// through the id they pinned (it is only used when the store is created).
	token, err := randomToken()
	if err != nil {
		return nil, err
	}
	ec.InitialClusterToken = "clustermesh-" + cfg.ClusterName + "-" + token
	ec.ClientTLSInfo.CertFile = cfg.ServerCertFile
	ec.ClientTLSInfo.KeyFile = cfg.ServerKeyFile
	ec.ClientTLSInfo.TrustedCAFile = cfg.CAFile
	ec.ClientTLSInfo.ClientCertAuth = true
	if len(cfg.TrustedCAFiles) > 0 {
		bundle, err := clientCABundle(cfg, dir)
		if err != nil {
			if own {
				os.RemoveAll(dir)
			}
			return nil, err
		}
		ec.ClientTLSInfo.TrustedCAFile = bundle
	}

	e, err := embed.StartEtcd(ec)
	if err != nil {
		if own {
			os.RemoveAll(dir)
		}
		return nil, fmt.Errorf("meshapiserver: start etcd on %s: %w", cfg.ListenAddress, err)
	}
	s := &etcdServer{etcd: e, dataDir: dir, ownDir: own}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		s.close()
		return nil, fmt.Errorf("meshapiserver: etcd failed while starting: %w", err)
	case <-time.After(30 * time.Second):
		s.close()
		return nil, errors.New("meshapiserver: etcd not ready after 30s")
	case <-ctx.Done():
		s.close()
		return nil, ctx.Err()
	}
	// The listener may have been asked for port 0: advertise what it got.
	s.url = "https://" + e.Clients[0].Addr().String()
	return s, nil
}

// clientCABundle writes the mesh CA and the further trusted CAs into one
// file in dir (etcd takes one) and returns its path.
func clientCABundle(cfg *Config, dir string) (string, error) {
	var bundle []byte
	for _, f := range append([]string{cfg.CAFile}, cfg.TrustedCAFiles...) {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("reading trusted CA: %w", err)
		}
		bundle = append(append(bundle, b...), '\n')
	}
	path := filepath.Join(dir, "client-cas.crt")
	if err := os.WriteFile(path, bundle, 0o600); err != nil {
		return "", fmt.Errorf("writing the trusted CA bundle: %w", err)
	}
	return path, nil
}

func randomToken() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("meshapiserver: cluster token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// close stops etcd and removes a temporary data directory.
func (s *etcdServer) close() {
	s.etcd.Close()
	if s.ownDir {
		os.RemoveAll(s.dataDir)
	}
}
