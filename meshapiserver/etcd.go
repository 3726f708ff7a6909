package meshapiserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// etcdServer is the embedded etcd of one cluster's mesh apiserver. Its only
// network listener is the client one: TLS with a client certificate from
// the mesh CA, gRPC only, every request a non-admin must not make refused
// (requestGuard). etcd's peer listener (raft, /members, /version) and its
// HTTP endpoints (/version, /metrics, /health, /debug) are unix sockets
// (mode 0600) in the apiserver's private directory (mode 0700): a single
// member has no peer to talk to, and nobody else on the host may reach them.
//
// The store is ephemeral by design: everything in it is re-derived from the
// state source, so it runs without fsync and, unless a data directory is
// given, in the runtime directory, removed on close or by the next start.
type etcdServer struct {
	etcd *embed.Etcd
	run  *runDir
	url  string
	log  *slog.Logger
}

// Socket names in the runtime directory.
const (
	peerSocket = "peer"
	httpSocket = "http"
)

// startEtcd starts the embedded etcd and waits until it serves.
func startEtcd(ctx context.Context, cfg *Config, guard *requestGuard) (*etcdServer, error) {
	run, err := openRunDir(cfg.RuntimeDir, cfg.ClusterName, cfg.Logger)
	if err != nil {
		return nil, err
	}
	s := &etcdServer{run: run, log: cfg.Logger}
	if err := s.start(ctx, cfg, guard); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func (s *etcdServer) start(ctx context.Context, cfg *Config, guard *requestGuard) error {
	ec := embed.NewConfig()
	ec.Name = cfg.ClusterName
	ec.Dir = cfg.DataDir
	if ec.Dir == "" {
		ec.Dir = filepath.Join(s.run.path, "data")
	}
	ec.UnsafeNoFsync = true
	ec.TickMs, ec.ElectionMs = 10, 100
	ec.MaxTxnOps = maxTxnOps
	ec.MaxRequestBytes = maxRequestBytes
	ec.EnableGRPCGateway = false
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ec.AuthToken = "simple"
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = cfg.historyRetention.String()
	ec.GRPCAdditionalServerOptions = guard.serverOptions()

	clientURL := url.URL{Scheme: "https", Host: cfg.ListenAddress}
	ec.ListenClientUrls = []url.URL{clientURL}
	ec.AdvertiseClientUrls = []url.URL{clientURL}
	// With a listener of their own, etcd's HTTP endpoints leave the client
	// port, which then serves gRPC only.
	ec.ListenClientHttpUrls = []url.URL{{Scheme: "unix", Host: s.run.socket(httpSocket)}}
	// etcd listens on the URL's Host; the advertised URL is never dialled
	// (no other member) and must survive a String/Parse round trip, which a
	// path does not.
	ec.ListenPeerUrls = []url.URL{{Scheme: "unix", Host: s.run.socket(peerSocket)}}
	ec.AdvertisePeerUrls = []url.URL{{Scheme: "unix", Host: cfg.ClusterName + "-peer"}}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	// etcd derives its cluster id from the peer URLs and this token. A fresh
	// token per store makes every store's id unique, so agents notice a
	// restarted (empty) store or another replica behind a load balancer
	// through the id they pinned (it is only used when the store is created).
	token, err := randomToken()
	if err != nil {
		return err
	}
	ec.InitialClusterToken = "clustermesh-" + cfg.ClusterName + "-" + token
	ec.ClientTLSInfo.CertFile = cfg.ServerCertFile
	ec.ClientTLSInfo.KeyFile = cfg.ServerKeyFile
	ec.ClientTLSInfo.TrustedCAFile = cfg.CAFile
	ec.ClientTLSInfo.ClientCertAuth = true
	if len(cfg.TrustedCAFiles) > 0 {
		bundle, err := s.clientCABundle(cfg)
		if err != nil {
			return err
		}
		ec.ClientTLSInfo.TrustedCAFile = bundle
	}

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return fmt.Errorf("starting etcd on %s: %w", cfg.ListenAddress, err)
	}
	s.etcd = e
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return fmt.Errorf("starting etcd: %w", err)
	case <-time.After(30 * time.Second):
		return errors.New("starting etcd: not ready after 30s")
	case <-ctx.Done():
		return ctx.Err()
	}
	for _, name := range []string{peerSocket, httpSocket} {
		if err := os.Chmod(s.run.socket(name), 0o600); err != nil {
			return fmt.Errorf("restricting etcd's %s socket: %w", name, err)
		}
	}
	// The listener may have been asked for port 0: advertise what it got.
	for _, l := range e.Clients {
		if l.Addr().Network() == "tcp" {
			s.url = "https://" + l.Addr().String()
		}
	}
	if s.url == "" {
		return errors.New("starting etcd: no TCP client listener")
	}
	return nil
}

// clientCABundle writes the mesh CA and the further trusted CAs into one
// file of the runtime directory (etcd takes one) and returns its path.
func (s *etcdServer) clientCABundle(cfg *Config) (string, error) {
	var bundle []byte
	for _, f := range append([]string{cfg.CAFile}, cfg.TrustedCAFiles...) {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("reading trusted CA: %w", err)
		}
		bundle = append(append(bundle, b...), '\n')
	}
	path := filepath.Join(s.run.path, "client-cas.crt")
	if err := os.WriteFile(path, bundle, 0o600); err != nil {
		return "", fmt.Errorf("writing the trusted CA bundle: %w", err)
	}
	return path, nil
}

func randomToken() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generating the cluster token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// close stops etcd and removes the runtime directory.
func (s *etcdServer) close() {
	if s.etcd != nil {
		s.etcd.Close()
	}
	if err := s.run.close(); err != nil {
		s.log.Warn("the next start removes it", "err", err)
	}
}
