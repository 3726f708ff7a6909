// Package etcdtest runs real multi-member etcd clusters in a test process,
// set up as docs/external-etcd.md asks of an operator's cluster for the
// apiserver: clients over mutual TLS with certificates of the mesh CA (the
// common name is the user), auth enabled with root and the given users in
// the root role, the transaction limits the publisher needs and no more,
// peers over mutual TLS on loopback. Members can be killed and restarted on
// their ports and data. Test support: imported by tests only.
package etcdtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/portlock"
)

// Config of a test cluster.
type Config struct {
	Members int // default 3
	// CA signs the members' peer certificate and the certificate auth is
	// set up with; CAFile is its certificate, the client CA of every
	// member. ServerCert and ServerKey are the members' client-port
	// certificate (for 127.0.0.1).
	CA                            *ca.CA
	CAFile, ServerCert, ServerKey string
	// RootUsers are given the root role, beside root, before auth is on.
	RootUsers []string
	// MaxTxnOps and MaxRequestBytes are etcd's limits (etcd's defaults
	// when zero).
	MaxTxnOps       uint
	MaxRequestBytes uint
}

// Cluster is a running test cluster; Start stops it in t's cleanup.
type Cluster struct {
	t                 testing.TB
	cfg               Config
	dir               string
	peerCert, peerKey string
	initial           string // the members' names and peer URLs
	mu                sync.Mutex
	members           []*member
}

type member struct {
	name, dir          string
	clientURL, peerURL url.URL
	etcd               *embed.Etcd // nil while killed
}

// Start starts the members, waits until they serve, and enables auth.
func Start(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	if cfg.Members == 0 {
		cfg.Members = 3
	}
	c := &Cluster{t: t, cfg: cfg, dir: t.TempDir()}
	c.peerCert, c.peerKey = c.issuePeerCert()
	var initial []string
	ports := freeLoopbackPorts(t, 2*cfg.Members)
	for i := range cfg.Members {
		m := &member{name: fmt.Sprintf("m%d", i), dir: filepath.Join(c.dir, fmt.Sprintf("m%d", i))}
		m.clientURL = url.URL{Scheme: "https", Host: ports[2*i]}
		m.peerURL = url.URL{Scheme: "https", Host: ports[2*i+1]}
		initial = append(initial, m.name+"="+m.peerURL.String())
		c.members = append(c.members, m)
	}
	c.initial = strings.Join(initial, ",")
	t.Cleanup(c.close)
	var wg sync.WaitGroup
	errs := make([]error, len(c.members))
	for i, m := range c.members {
		wg.Add(1)
		go func() { // members wait for each other's quorum
			defer wg.Done()
			errs[i] = c.startMember(m, embed.ClusterStateFlagNew)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	c.enableAuth()
	return c
}

// freeLoopbackPorts returns n distinct 127.0.0.1:<port>, leased until t
// ends (a member restarts on the ports it had: no other test may be handed
// them meanwhile, and etcd cannot pick them).
func freeLoopbackPorts(t testing.TB, n int) []string {
	t.Helper()
	var out []string
	for range n {
		l, err := portlock.Reserve()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Release)
		out = append(out, l.Addr())
	}
	return out
}

func (c *Cluster) startMember(m *member, state string) error {
	ec := embed.NewConfig()
	ec.Name, ec.Dir = m.name, m.dir
	ec.UnsafeNoFsync = true
	// etcd's defaults: shorter ones make raft leadership flap on a loaded
	// machine, and every new raft leader extends every lease (a dead
	// apiserver's session then outlives its TTL many times).
	ec.TickMs, ec.ElectionMs = 100, 1000
	if c.cfg.MaxTxnOps != 0 {
		ec.MaxTxnOps = c.cfg.MaxTxnOps
	}
	if c.cfg.MaxRequestBytes != 0 {
		ec.MaxRequestBytes = c.cfg.MaxRequestBytes
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(testEtcdLogger())
	ec.AuthToken = "simple"
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{m.clientURL}, []url.URL{m.clientURL}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{m.peerURL}, []url.URL{m.peerURL}
	ec.InitialCluster, ec.ClusterState = c.initial, state
	ec.InitialClusterToken = "clustermesh-test"
	ec.ClientTLSInfo.CertFile, ec.ClientTLSInfo.KeyFile = c.cfg.ServerCert, c.cfg.ServerKey
	ec.ClientTLSInfo.TrustedCAFile, ec.ClientTLSInfo.ClientCertAuth = c.cfg.CAFile, true
	ec.PeerTLSInfo.CertFile, ec.PeerTLSInfo.KeyFile = c.peerCert, c.peerKey
	ec.PeerTLSInfo.TrustedCAFile, ec.PeerTLSInfo.ClientCertAuth = c.cfg.CAFile, true
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return fmt.Errorf("starting etcd member %s: %w", m.name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("etcd member %s: %w", m.name, err)
	case <-time.After(60 * time.Second):
		e.Close()
		return fmt.Errorf("etcd member %s not ready after 60s", m.name)
	}
	c.mu.Lock()
	m.etcd = e
	c.mu.Unlock()
	return nil
}

// enableAuth is the operator's part: root and RootUsers in the root role,
// auth on.
func (c *Cluster) enableAuth() {
	c.t.Helper()
	issued, err := c.cfg.CA.IssueClient("root")
	if err != nil {
		c.t.Fatal(err)
	}
	if err := issued.Save(c.dir, "root"); err != nil {
		c.t.Fatal(err)
	}
	cli := c.Client(filepath.Join(c.dir, "root.crt"), filepath.Join(c.dir, "root.key"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, u := range append([]string{"root"}, c.cfg.RootUsers...) {
		if _, err := cli.UserAddWithOptions(ctx, u, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil {
			c.t.Fatal(err)
		}
		if _, err := cli.UserGrantRole(ctx, u, "root"); err != nil {
			c.t.Fatal(err)
		}
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		c.t.Fatal(err)
	}
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, m.clientURL.String())
	}
	return out
}

// ClientURL is member i's client URL.
func (c *Cluster) ClientURL(i int) string { return c.members[i].clientURL.String() }

// Client connects to every member with cert and key (closed by cleanup).
func (c *Cluster) Client(cert, key string) *clientv3.Client {
	c.t.Helper()
	tlsCfg, err := ca.ClientTLSConfig(cert, key, c.cfg.CAFile)
	if err != nil {
		c.t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cli.Close() })
	return cli
}

// Kill stops member i (its data stays).
func (c *Cluster) Kill(i int) {
	c.mu.Lock()
	e := c.members[i].etcd
	c.members[i].etcd = nil
	c.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Restart starts member i again on its data and ports and waits until it
// serves (safe outside the test's goroutine).
func (c *Cluster) Restart(i int) error {
	return c.startMember(c.members[i], embed.ClusterStateFlagExisting)
}

// RaftLeader is the index of the member that leads raft, -1 if none.
func (c *Cluster) RaftLeader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.members {
		if m.etcd != nil && m.etcd.Server.Leader() == m.etcd.Server.MemberID() {
			return i
		}
	}
	return -1
}

func (c *Cluster) close() {
	for i := range c.members {
		c.Kill(i)
	}
}

// testEtcdLogger is etcd's logger: nothing, or warnings and errors with
// CLUSTERMESH_TEST_LOG set.
func testEtcdLogger() *zap.Logger {
	if os.Getenv("CLUSTERMESH_TEST_LOG") == "" {
		return zap.NewNop()
	}
	cfg := zap.NewDevelopmentConfig()
	cfg.Level = zap.NewAtomicLevelAt(zap.WarnLevel)
	l, err := cfg.Build()
	if err != nil {
		return zap.NewNop()
	}
	return l
}

// issuePeerCert writes a certificate of the CA for 127.0.0.1 that members
// present both as peer servers and as peer clients.
func (c *Cluster) issuePeerCert() (certFile, keyFile string) {
	t := c.t
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "etcd-peer"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cfg.CA.Cert, &key.PublicKey, c.cfg.CA.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(c.dir, "peer.crt"), filepath.Join(c.dir, "peer.key")
	for f, b := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "EC PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(f, pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}
