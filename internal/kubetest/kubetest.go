// Package kubetest starts real Kubernetes API servers for tests: one embedded
// etcd (mutual TLS, in the test process) and one kube-apiserver process per
// cluster, each under its own etcd prefix, a kubeconfig with one context per
// cluster, and a client-go clientset for each. No controller, scheduler or
// kubelet runs: tests create the objects those would (EndpointSlices, pod
// and node status, a LoadBalancer's ingress IP) themselves.
//
// The kube-apiserver binary is built from the Go module proxy by
// `make kube-apiserver` (tools/kube-apiserver) into a cache outside the repo.
// Tests find it through $KUBE_APISERVER, or at the cache's default path; when
// it is missing they skip, except under CI=true, where they fail.
package kubetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/portlock"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// Version is the kube-apiserver the tests run (tools/kube-apiserver).
const Version = "v1.37.1"

// EnvBinary names the environment variable that points at the binary.
const EnvBinary = "KUBE_APISERVER"

// token is the bearer token of the admin user (group system:masters).
const token = "kubetest-admin-token"

// tool is the kube-apiserver tools/kube-apiserver/build.sh builds.
var tool = testenv.Tool{Env: EnvBinary, File: "kube-apiserver-" + Version, What: "kube-apiserver binary",
	Build: "run `make kube-apiserver` (builds " + Version + " from the Go module proxy once, about 6 minutes)"}

// DefaultBinary is where tools/kube-apiserver/build.sh puts the binary:
// $XDG_CACHE_HOME (or ~/.cache)/clustermesh/kube-apiserver-<Version>.
func DefaultBinary() string { return tool.DefaultPath() }

// Binary returns the kube-apiserver to run: $KUBE_APISERVER, else
// DefaultBinary; an error says how to build it when there is none.
func Binary() (string, error) { return tool.Path() }

// Require returns the kube-apiserver binary, or skips t when there is none —
// fails it under CI=true, where a test against a real API server must never
// silently skip.
func Require(t testing.TB) string { return tool.Require(t) }

// Env is a set of running API servers ("clusters") sharing one etcd.
type Env struct {
	Dir        string // certificates, keys, logs
	Kubeconfig string // one context per cluster, named after it; the first is current
	Clusters   []*Cluster

	etcd    *embed.Etcd
	etcdURL string
	rbac    bool
	caPEM   []byte
}

// Cluster is one running kube-apiserver.
type Cluster struct {
	Name   string       // also its kubeconfig context and cluster name
	Host   string       // https://127.0.0.1:PORT
	Config *rest.Config // admin
	Client kubernetes.Interface
	Log    string // the process's output

	cmd  *exec.Cmd
	done chan struct{}   // closed when the process has exited
	err  error           // the process's exit, valid after done
	port *portlock.Lease // its secure port, released when it stops
}

// Start starts one API server per name (in parallel) against a fresh
// embedded etcd, waits until each is ready and has its default namespace,
// and stops them all when t ends. It skips t (or fails it under CI=true)
// when there is no kube-apiserver binary; see Require. Every request is
// allowed (--authorization-mode=AlwaysAllow); StartWith can enforce RBAC.
func Start(t testing.TB, names ...string) *Env {
	t.Helper()
	return StartWith(t, Options{}, names...)
}

// Options of StartWith.
type Options struct {
	// RBAC runs the API servers with --authorization-mode=RBAC: the admin
	// (group system:masters) may still do anything, and a kubeconfig from
	// ServiceAccountKubeconfig only what the service account's roles allow.
	// Starting takes about 2 s longer (the default roles are bootstrapped).
	RBAC bool
}

// StartWith is Start with options.
func StartWith(t testing.TB, o Options, names ...string) *Env {
	t.Helper()
	bin := Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env, err := start(ctx, bin, t.TempDir(), o, names)
	if env != nil {
		t.Cleanup(func() {
			if t.Failed() {
				for _, c := range env.Clusters {
					t.Logf("kube-apiserver %s (last lines of %s):\n%s", c.Name, c.Log, tail(c.Log, 20))
				}
			}
			env.Stop()
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// Cluster returns the cluster named name, or nil.
func (e *Env) Cluster(name string) *Cluster {
	for _, c := range e.Clusters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func start(ctx context.Context, bin, dir string, o Options, names []string) (*Env, error) {
	if len(names) == 0 {
		return nil, errors.New("kubetest: name at least one cluster")
	}
	env := &Env{Dir: dir, Kubeconfig: filepath.Join(dir, "kubeconfig"), rbac: o.RBAC}
	pki, err := newPKI(dir)
	if err != nil {
		return nil, err
	}
	if err := env.startEtcd(pki); err != nil {
		return nil, err
	}
	for _, n := range names {
		env.Clusters = append(env.Clusters, &Cluster{Name: n, Log: filepath.Join(dir, n+".log")})
	}
	var wg sync.WaitGroup
	errs := make([]error, len(names))
	for i, c := range env.Clusters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.start(ctx, bin, dir, env.etcdURL, pki, o.RBAC)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return env, err
	}
	return env, env.writeKubeconfig(pki.caPEM)
}

// Stop stops every API server, then etcd. It is safe to call twice.
func (e *Env) Stop() {
	for _, c := range e.Clusters {
		c.stop()
	}
	if e.etcd != nil {
		e.etcd.Close()
		e.etcd = nil
	}
}

// pki holds one CA for the API servers' serving certificates and etcd.
type pki struct {
	dir   string
	ca    *ca.CA
	caPEM []byte
}

func newPKI(dir string) (*pki, error) {
	c, err := ca.New("kubetest CA", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	p := &pki{dir: filepath.Join(dir, "pki"), ca: c, caPEM: c.CertPEM()}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.path("ca.crt"), p.caPEM, 0o644); err != nil {
		return nil, err
	}
	// The service account signing key, shared by every cluster (it only
	// signs tokens nobody here uses).
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.path("sa.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.path("sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return nil, err
	}
	tokens := token + `,admin,admin-uid,"system:masters"` + "\n"
	if err := os.WriteFile(p.path("tokens.csv"), []byte(tokens), 0o600); err != nil {
		return nil, err
	}
	for _, s := range []struct {
		name   string
		server bool
	}{{"etcd-server", true}, {"etcd-client", false}, {"kube-apiserver", true}} {
		var i *ca.Issued
		if s.server {
			i, err = c.IssueServer(s.name, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
		} else {
			i, err = c.IssueClient(s.name)
		}
		if err != nil {
			return nil, err
		}
		if err := i.Save(p.dir, s.name); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

func (e *Env) startEtcd(p *pki) error {
	ec := embed.NewConfig()
	ec.Name = "kubetest"
	ec.Dir = filepath.Join(e.Dir, "etcd")
	ec.UnsafeNoFsync = true
	ec.TickMs, ec.ElectionMs = 10, 100
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ec.EnableGRPCGateway = false
	clientURL := url.URL{Scheme: "https", Host: "127.0.0.1:0"}
	peerURL := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{clientURL}, []url.URL{clientURL}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{peerURL}, []url.URL{peerURL}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.ClientTLSInfo.CertFile = p.path("etcd-server.crt")
	ec.ClientTLSInfo.KeyFile = p.path("etcd-server.key")
	ec.ClientTLSInfo.TrustedCAFile = p.path("ca.crt")
	ec.ClientTLSInfo.ClientCertAuth = true
	etcd, err := embed.StartEtcd(ec)
	if err != nil {
		return fmt.Errorf("kubetest: start etcd: %w", err)
	}
	select {
	case <-etcd.Server.ReadyNotify():
	case err := <-etcd.Err():
		etcd.Close()
		return fmt.Errorf("kubetest: etcd failed while starting: %w", err)
	case <-time.After(30 * time.Second):
		etcd.Close()
		return errors.New("kubetest: etcd not ready after 30s")
	}
	e.etcd = etcd
	e.etcdURL = "https://" + etcd.Clients[0].Addr().String()
	return nil
}

// start runs the kube-apiserver on a free port (retrying when another
// process took the port first) and waits until it is ready.
func (c *Cluster) start(ctx context.Context, bin, dir, etcdURL string, p *pki, rbac bool) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if c.port, err = portlock.Reserve(); err != nil {
			return fmt.Errorf("kubetest: a port for kube-apiserver %s: %w", c.Name, err)
		}
		if err = c.run(ctx, bin, dir, etcdURL, p, c.port.Port, rbac); err == nil {
			return nil
		}
		c.stop()
		if !strings.Contains(tail(c.Log, 50), "address already in use") {
			break
		}
	}
	return fmt.Errorf("kubetest: kube-apiserver %s: %w\n%s", c.Name, err, tail(c.Log, 20))
}

func (c *Cluster) run(ctx context.Context, bin, dir, etcdURL string, p *pki, port int, rbac bool) error {
	certDir := filepath.Join(dir, c.Name+"-certs")
	authz := "AlwaysAllow"
	if rbac {
		authz = "RBAC"
	}
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--etcd-prefix=/registry-" + c.Name,
		"--etcd-cafile=" + p.path("ca.crt"),
		"--etcd-certfile=" + p.path("etcd-client.crt"),
		"--etcd-keyfile=" + p.path("etcd-client.key"),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + certDir,
		"--tls-cert-file=" + p.path("kube-apiserver.crt"),
		"--tls-private-key-file=" + p.path("kube-apiserver.key"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + p.path("sa.pub"),
		"--service-account-signing-key-file=" + p.path("sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--token-auth-file=" + p.path("tokens.csv"),
		"--authorization-mode=" + authz,
		// No controller manager creates the default service accounts.
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true", // as real clusters running a CNI agent
	}
	logf, err := os.Create(c.Log)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Die with the test binary, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	c.cmd, c.done = cmd, make(chan struct{})
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()

	c.Host = fmt.Sprintf("https://127.0.0.1:%d", port)
	c.Config = &rest.Config{
		Host:            c.Host,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: p.caPEM},
		QPS:             1000,
		Burst:           1000,
	}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return err
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-c.done:
			return fmt.Errorf("exited while starting: %v", c.err)
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w", ctx.Err())
		case <-tick.C:
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		if err == nil {
			_, err = c.Client.CoreV1().Namespaces().Get(rctx, metav1.NamespaceDefault, metav1.GetOptions{})
		}
		cancel()
		if err == nil {
			return nil
		}
	}
}

func (c *Cluster) stop() {
	if c.port != nil {
		defer c.port.Release()
	}
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
	c.cmd = nil
}

func (e *Env) writeKubeconfig(caPEM []byte) error {
	e.caPEM = caPEM
	return clientcmd.WriteToFile(*e.kubeconfig(nil), e.Kubeconfig)
}

// kubeconfig has one context per cluster, as the admin, or as as.
func (e *Env) kubeconfig(as *clientcmdapi.AuthInfo) *clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	for _, c := range e.Clusters {
		user, userName := &clientcmdapi.AuthInfo{Token: token}, c.Name+"-admin"
		if as != nil {
			user, userName = as.DeepCopy(), c.Name+"-"+as.Impersonate
			user.Token = token
		}
		cfg.Clusters[c.Name] = &clientcmdapi.Cluster{Server: c.Host, CertificateAuthorityData: e.caPEM}
		cfg.AuthInfos[userName] = user
		cfg.Contexts[c.Name] = &clientcmdapi.Context{Cluster: c.Name, AuthInfo: userName}
	}
	cfg.CurrentContext = e.Clusters[0].Name
	return cfg
}

// ServiceAccountKubeconfig writes a kubeconfig like Env.Kubeconfig (one
// context per cluster, named after it) whose requests act as the service
// account namespace/name: the admin impersonates it, so that with
// Options.RBAC they are allowed only what its roles allow, as in a pod.
// It returns the file's path.
func (e *Env) ServiceAccountKubeconfig(namespace, name string) (string, error) {
	as := &clientcmdapi.AuthInfo{
		Impersonate:       "system:serviceaccount:" + namespace + ":" + name,
		ImpersonateGroups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
	}
	path := filepath.Join(e.Dir, "kubeconfig-"+namespace+"-"+name)
	if err := clientcmd.WriteToFile(*e.kubeconfig(as), path); err != nil {
		return "", fmt.Errorf("kubetest: %w", err)
	}
	return path, nil
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// SetLoadBalancerIngress plays the cloud load balancer: it sets the ingress
// IP of Service namespace/name's status.
func (c *Cluster) SetLoadBalancerIngress(ctx context.Context, namespace, name, ip string) error {
	svc, err := c.Client.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ip}}
	_, err = c.Client.CoreV1().Services(namespace).UpdateStatus(ctx, svc, metav1.UpdateOptions{})
	return err
}

// CreateNamespace creates namespace name with labels, unless it exists.
func (c *Cluster) CreateNamespace(ctx context.Context, name string, labels map[string]string) error {
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}
