package meshapiserver

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
)

// etcdCluster is a real three-member etcd cluster in the test process, set
// up as docs/external-etcd.md asks of an operator's: clients over mutual
// TLS (certificates of the mesh CA, the common name is the user), auth
// enabled with a root user and the apiserver's admin-<cluster> user in the
// root role. Peers talk mutual TLS on loopback with a peer certificate of
// the mesh CA (server and client usage). Members can be killed and
// restarted on the same ports and data.
type etcdCluster struct {
	t                 *testing.T
	bundle            ca.Bundle
	peerCert, peerKey string
	initial           string // the members' names and peer URLs
	mu                sync.Mutex
	members           []*etcdMember
}

type etcdMember struct {
	name, dir          string
	clientURL, peerURL url.URL
	etcd               *embed.Etcd // nil while killed
}

// startEtcdCluster starts three members with the server certificate of
// bundle and enables auth with root and AdminUser(bundle.Cluster).
func startEtcdCluster(t *testing.T, mesh *ca.CA, bundle ca.Bundle) *etcdCluster {
	t.Helper()
	c := &etcdCluster{t: t, bundle: bundle}
	dir := t.TempDir()
	c.peerCert, c.peerKey = issuePeerCert(t, mesh, dir)
	var initial []string
	ports := freeLoopbackPorts(t, 6)
	for i := range 3 {
		m := &etcdMember{name: fmt.Sprintf("m%d", i), dir: filepath.Join(dir, fmt.Sprintf("m%d", i))}
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

// freeLoopbackPorts returns n distinct 127.0.0.1:<port> free a moment ago
// (a member restarts on the ports it had, so etcd cannot pick them).
func freeLoopbackPorts(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close() // held until all are picked: no port twice
		out = append(out, l.Addr().String())
	}
	return out
}

func (c *etcdCluster) startMember(m *etcdMember, state string) error {
	ec := embed.NewConfig()
	ec.Name, ec.Dir = m.name, m.dir
	ec.UnsafeNoFsync = true
	ec.TickMs, ec.ElectionMs = 50, 500
	// What docs/external-etcd.md asks of an operator's cluster, no more.
	ec.MaxTxnOps = ExternalEtcdMinTxnOps
	ec.MaxRequestBytes = ExternalEtcdMinRequestBytes
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(testEtcdLogger())
	ec.AuthToken = "simple"
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{m.clientURL}, []url.URL{m.clientURL}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{m.peerURL}, []url.URL{m.peerURL}
	ec.InitialCluster, ec.ClusterState = c.initial, state
	ec.InitialClusterToken = "clustermesh-test"
	ec.ClientTLSInfo.CertFile, ec.ClientTLSInfo.KeyFile = c.bundle.ServerCert(), c.bundle.ServerKey()
	ec.ClientTLSInfo.TrustedCAFile, ec.ClientTLSInfo.ClientCertAuth = c.bundle.CAFile(), true
	ec.PeerTLSInfo.CertFile, ec.PeerTLSInfo.KeyFile = c.peerCert, c.peerKey
	ec.PeerTLSInfo.TrustedCAFile, ec.PeerTLSInfo.ClientCertAuth = c.bundle.CAFile(), true
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

// enableAuth is the operator's part: a root user, the apiserver's user in
// the root role, auth on.
func (c *etcdCluster) enableAuth() {
	c.t.Helper()
	cli := c.client(c.bundle.AdminCert(), c.bundle.AdminKey())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, u := range []string{rootUser, AdminUser(c.bundle.Cluster)} {
		if _, err := cli.UserAddWithOptions(ctx, u, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil {
			c.t.Fatal(err)
		}
		if _, err := cli.UserGrantRole(ctx, u, rootRole); err != nil {
			c.t.Fatal(err)
		}
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		c.t.Fatal(err)
	}
}

// endpoints are the members' client URLs.
func (c *etcdCluster) endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, m.clientURL.String())
	}
	return out
}

// client connects to every member with cert and key (closed by cleanup).
func (c *etcdCluster) client(cert, key string) *clientv3.Client {
	c.t.Helper()
	tlsCfg, err := ca.ClientTLSConfig(cert, key, c.bundle.CAFile())
	if err != nil {
		c.t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.endpoints(), TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cli.Close() })
	return cli
}

// kill stops member i (its data stays).
func (c *etcdCluster) kill(i int) {
	c.mu.Lock()
	e := c.members[i].etcd
	c.members[i].etcd = nil
	c.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// restart starts member i again on its data and ports.
func (c *etcdCluster) restart(i int) {
	c.t.Helper()
	if err := c.startMember(c.members[i], embed.ClusterStateFlagExisting); err != nil {
		c.t.Fatal(err)
	}
}

// raftLeader is the index of the member that leads raft, -1 if none.
func (c *etcdCluster) raftLeader() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.members {
		if m.etcd != nil && m.etcd.Server.Leader() == m.etcd.Server.MemberID() {
			return i
		}
	}
	return -1
}

func (c *etcdCluster) close() {
	for i := range c.members {
		c.kill(i)
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

// issuePeerCert writes a certificate of mesh for 127.0.0.1 that members
// present both as peer servers and as peer clients.
func issuePeerCert(t *testing.T, mesh *ca.CA, dir string) (certFile, keyFile string) {
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
	der, err := x509.CreateCertificate(rand.Reader, tmpl, mesh.Cert, &key.PublicKey, mesh.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "peer.crt"), filepath.Join(dir, "peer.key")
	writeFile(t, certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	writeFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})))
	return certFile, keyFile
}
