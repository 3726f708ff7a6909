package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/node"
	"github.com/clustermesh/clustermesh/wire"
)

// apiserverRun is 'clustermesh apiserver' as enable's Deployment runs it,
// in this process: the certificates from the cluster's secrets and the
// trusted peer CAs from its configmap written as the kubelet would mount
// them, the Kubernetes source and identity store acting as the apiserver's
// service account.
type apiserverRun struct {
	name   string
	id     int
	url    string
	certs  string // the mounted certificates
	admin  *clientv3.Client
	cancel context.CancelFunc
	done   chan error
}

// startAPIServer starts c's apiserver on listen (host:port, an address its
// server certificate names) with a fresh data directory, waits until it has
// published, and stops it when t ends.
func startAPIServer(t *testing.T, env *kubetest.Env, c *kubetest.Cluster, listen string) *apiserverRun {
	t.Helper()
	ctx := context.Background()
	ns := defaultKubeNamespace
	core := c.Client.CoreV1()
	cm, err := core.ConfigMaps(ns).Get(ctx, meshConfigName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a := &apiserverRun{name: cm.Data[cfgClusterName], url: "https://" + listen, done: make(chan error, 1)}
	a.id, _ = strconv.Atoi(cm.Data[cfgClusterID])
	dir := t.TempDir()
	a.certs = filepath.Join(dir, "certs")
	trusted := filepath.Join(dir, "trusted-cas")
	os.MkdirAll(a.certs, 0o700)
	os.MkdirAll(trusted, 0o700)
	for _, f := range []struct{ secret, key, file string }{
		{serverSecretName, "ca.crt", "ca.crt"}, {serverSecretName, corev1.TLSCertKey, "server.crt"}, {serverSecretName, corev1.TLSPrivateKeyKey, "server.key"},
		{adminSecretName, corev1.TLSCertKey, "admin-" + a.name + ".crt"}, {adminSecretName, corev1.TLSPrivateKeyKey, "admin-" + a.name + ".key"},
	} {
		s, err := core.Secrets(ns).Get(ctx, f.secret, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(a.certs, f.file), s.Data[f.key], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var cas map[string]string
	if cm, err := core.ConfigMaps(ns).Get(ctx, trustedCAsName, metav1.GetOptions{}); err == nil {
		cas = cm.Data
	} else if !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	for peer, pem := range cas {
		if err := os.WriteFile(filepath.Join(trusted, peer), []byte(pem), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	kubeconfig, err := env.ServiceAccountKubeconfig(ns, apiserverName)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"apiserver", "--cluster-name", a.name, "--cluster-id", strconv.Itoa(a.id),
		"--cert-dir", a.certs, "--trusted-ca-dir", trusted, "--state-source", "kubernetes",
		"--kubeconfig", kubeconfig, "--context", c.Name, "--namespace", ns,
		"--listen", listen, "--metrics-addr", "", "--data-dir", filepath.Join(dir, "etcd"),
		"--heartbeat-interval", "1s"}
	if peers := cm.Data[cfgPeers]; peers != "" {
		args = append(args, "--peer", peers)
	}
	runCtx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	go func() {
		out, err := run(runCtx, args...)
		if err != nil {
			t.Logf("apiserver %s output:\n%s", a.name, out)
		}
		a.done <- err
	}()
	t.Cleanup(func() { a.stop(t) })

	b := ca.Bundle{Dir: a.certs, Cluster: a.name}
	tlsCfg, err := ca.ClientTLSConfig(b.AdminCert(), b.AdminKey(), b.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	if a.admin, err = clientv3.New(clientv3.Config{Endpoints: []string{a.url}, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.admin.Close() })
	testenv.WaitFor(t, 30*time.Second, "apiserver "+a.name+" published its identities", func() bool {
		select {
		case err := <-a.done:
			a.done <- err
			t.Fatalf("apiserver %s exited: %v", a.name, err)
		default:
		}
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		defer rcancel()
		r, err := a.admin.Get(rctx, wire.SyncedKey(a.name, wire.Identities))
		return err == nil && len(r.Kvs) == 1
	})
	return a
}

// stop stops the apiserver and checks that it ended cleanly; it may be
// called twice.
func (a *apiserverRun) stop(t *testing.T) {
	if a.cancel == nil {
		return
	}
	a.cancel()
	a.cancel = nil
	if err := <-a.done; err != nil {
		t.Errorf("apiserver %s: %v", a.name, err)
	}
}

// identities are the identities the apiserver published: labels → number.
func (a *apiserverRun) identities(t *testing.T) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := a.admin.Get(ctx, wire.Identities.ListPrefix(""), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range r.Kvs {
		k := string(kv.Key)
		out[string(kv.Value)] = k[strings.LastIndex(k, "/")+1:]
	}
	return out
}

// podRun is what a cluster's pods would run, as local processes: its mesh
// apiserver (startAPIServer) and one agent reading the remotes secret as the
// kubelet would mount it.
type podRun struct {
	api    *apiserverRun
	sock   string // the agent's status address
	remote string // the remotes dir
}

func startPods(t *testing.T, env *kubetest.Env, c *kubetest.Cluster, listenIP string) *podRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ns := defaultKubeNamespace
	core := c.Client.CoreV1()
	p := &podRun{api: startAPIServer(t, env, c, listenIP+":2379"), remote: filepath.Join(t.TempDir(), "remotes")}
	os.MkdirAll(p.remote, 0o700)

	// The kubelet: the remotes secret, as files, kept up to date.
	mount := func() {
		s, err := core.Secrets(ns).Get(ctx, remotesSecretName, metav1.GetOptions{})
		data := map[string][]byte{}
		if err == nil {
			data = s.Data
		}
		entries, _ := os.ReadDir(p.remote)
		for _, e := range entries {
			if _, ok := data[e.Name()]; !ok {
				os.Remove(filepath.Join(p.remote, e.Name()))
			}
		}
		for k, v := range data {
			path := filepath.Join(p.remote, k)
			if old, err := os.ReadFile(path); err == nil && string(old) == string(v) {
				continue
			}
			os.WriteFile(path+".tmp", v, 0o600)
			os.Rename(path+".tmp", path)
		}
	}
	mount()
	kubeletDone := make(chan struct{})
	go func() {
		defer close(kubeletDone)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				mount()
			}
		}
	}()

	// The agent: `clustermesh agent` as the DaemonSet runs it, reading the
	// cluster and reporting its status there.
	dir := t.TempDir()
	p.sock = filepath.Join(dir, "agent.sock")
	pinDir := filepath.Join("/sys/fs/bpf", fmt.Sprintf("cm-k8stest-%d-%s", os.Getpid(), c.Name))
	agentDone := make(chan error, 1)
	go func() {
		_, err := run(ctx, "agent", "--cluster-name", p.api.name, "--cluster-id", strconv.Itoa(p.api.id), "--config-dir", p.remote,
			"--state-source", "kubernetes", "--kubeconfig", env.Kubeconfig, "--context", c.Name, "--node-name", c.Name+"-node",
			"--status-addr", p.sock, "--metrics-addr", "", "--bpf-pin-dir", pinDir, "--socket-lb=false",
			"--probe-interval", "200ms", "--probe-timeout", "1s", "--backoff-max", "1s", "--report-interval", "100ms",
			"--policy-from-kubernetes", "--hubble-socket-path", filepath.Join(dir, "hubble.sock"))
		agentDone <- err
	}()
	t.Cleanup(func() {
		cancel()
		<-kubeletDone
		if err := <-agentDone; err != nil {
			t.Errorf("agent %s: %v", p.api.name, err)
		}
		if os.Geteuid() == 0 {
			node.RemovePins(pinDir)
		}
	})
	return p
}

// status is the agent's status from its status address (zero until it
// serves).
func (p *podRun) status() AgentStatus {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st, _ := fetchStatus(ctx, p.sock)
	return st
}

func (p *podRun) remoteStatus(name string) (agentsync.RemoteStatus, bool) {
	for _, r := range p.status().Remotes {
		if r.Name == name {
			return r, true
		}
	}
	return agentsync.RemoteStatus{}, false
}

func (p *podRun) service(ns, name string) (agentsync.ServiceStatus, bool) {
	for _, s := range p.status().Services {
		if s.Namespace == ns && s.Name == name {
			return s, true
		}
	}
	return agentsync.ServiceStatus{}, false
}
