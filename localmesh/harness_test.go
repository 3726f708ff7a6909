package localmesh

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/meshapiserver"
	"github.com/clustermesh/clustermesh/statesource"
)

// The fault tests run a remote apiserver as a separate process (so that it
// can be SIGKILLed), put a TCP proxy between it and the agent (to cut the
// connection or swap the replica behind it), and record every datapath
// write the agent makes.

const apiserverEnv = "CLUSTERMESH_TEST_APISERVER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(apiserverEnv); spec != "" {
		os.Exit(runAPIServerProcess(spec))
	}
	testenv.Main(m)
}

// processSpec is what the child process needs to run an apiserver.
type processSpec struct {
	Cluster   string
	ID        uint32
	Listen    string
	CertDir   string
	Peers     []string
	StateFile string
}

// runAPIServerProcess is the child: it runs the apiserver and prints
// "READY <url>" once the first snapshot and the canaries are in.
func runAPIServerProcess(spec string) int {
	var ps processSpec
	if err := json.Unmarshal([]byte(spec), &ps); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	b := ca.Bundle{Dir: ps.CertDir, Cluster: ps.Cluster}
	srv, err := meshapiserver.New(meshapiserver.Config{
		ClusterName: ps.Cluster, ClusterID: ps.ID, ListenAddress: ps.Listen,
		ServerCertFile: b.ServerCert(), ServerKeyFile: b.ServerKey(), CAFile: b.CAFile(),
		AdminCertFile: b.AdminCert(), AdminKeyFile: b.AdminKey(), Peers: ps.Peers,
		Source: &statesource.File{Path: ps.StateFile},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() {
		select {
		case <-srv.Ready():
			fmt.Printf("READY %s\n", srv.ClientURL())
		case <-ctx.Done():
		}
	}()
	if err := srv.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// apiserverProcess is a remote apiserver in a child process.
type apiserverProcess struct {
	cmd *exec.Cmd
	url string
}

// startAPIServerProcess starts a child apiserver and waits until it is ready.
func startAPIServerProcess(t *testing.T, ps processSpec) *apiserverProcess {
	t.Helper()
	spec, _ := json.Marshal(ps)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), apiserverEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &apiserverProcess{cmd: cmd}
	t.Cleanup(p.kill)
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if url, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				ready <- url
			}
		}
	}()
	select {
	case p.url = <-ready:
	case <-time.After(3 * time.Minute):
		t.Fatal("child apiserver not ready after 3 minutes")
	}
	return p
}

// kill SIGKILLs the child (no graceful close) and reaps it.
func (p *apiserverProcess) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

// proxy forwards TCP connections to a target that can be swapped, and can
// cut every connection and refuse new ones.
type proxy struct {
	ln net.Listener

	mu     sync.Mutex
	target string            // guarded by mu
	paused bool              // guarded by mu
	conns  map[net.Conn]bool // guarded by mu
	wg     sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target, paused := p.target, p.paused
		if !paused {
			p.conns[c] = true
		}
		p.mu.Unlock()
		if paused {
			c.Close()
			continue
		}
		p.wg.Add(1)
		go p.pipe(c, target)
	}
}

func (p *proxy) pipe(c net.Conn, target string) {
	defer p.wg.Done()
	up, err := net.DialTimeout("tcp", target, 2*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[up] = true
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { copyNoSplice(up, c); done <- struct{}{} }()
	go func() { copyNoSplice(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// cut closes every open connection.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// pause cuts every connection and refuses new ones until resume.
func (p *proxy) pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
	p.cut()
}

func (p *proxy) resume() {
	p.mu.Lock()
	p.paused = false
	p.mu.Unlock()
}

// swap sends new connections to target and cuts the open ones (a load
// balancer moving the agent to another replica).
func (p *proxy) swap(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
	p.cut()
}

// recorder wraps a datapath and records every ipcache write. gate, when
// armed, blocks the writer after a number of ipcache batches until opened.
type recorder struct {
	datapath.Datapath

	mu      sync.Mutex
	deletes map[netip.Prefix]int // guarded by mu
	batches int                  // guarded by mu
	blockAt int                  // guarded by mu; 0: never
	blocked chan struct{}        // closed when the writer blocks
	release chan struct{}        // closed to let it go on
}

func newRecorder() *recorder {
	return &recorder{Datapath: datapath.NewMemory(), deletes: map[netip.Prefix]int{},
		blocked: make(chan struct{}), release: make(chan struct{})}
}

func (r *recorder) DeleteIPCache(p netip.Prefix) error {
	r.mu.Lock()
	r.deletes[p]++
	r.mu.Unlock()
	return r.Datapath.DeleteIPCache(p)
}

func (r *recorder) UpsertIPCacheBatch(ps []netip.Prefix, es []datapath.IPCacheEntry) error {
	r.mu.Lock()
	r.batches++
	block := r.blockAt != 0 && r.batches == r.blockAt
	r.mu.Unlock()
	err := r.Datapath.(datapath.BatchWriter).UpsertIPCacheBatch(ps, es)
	if block {
		close(r.blocked)
		<-r.release
	}
	return err
}

// deleted returns how often each prefix was deleted.
func (r *recorder) deleted() map[netip.Prefix]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[netip.Prefix]int, len(r.deletes))
	for p, n := range r.deletes {
		out[p] = n
	}
	return out
}

// bigState is a cluster of n pods over 50 nodes, with labels drawn from
// identities distinct label sets, and services global services of
// backendsPer backends each.
func bigState(id, n, identities, services, backendsPer int) *statesource.State {
	st := &statesource.State{}
	for i := 0; i < 50; i++ {
		st.Nodes = append(st.Nodes, statesource.Node{Name: fmt.Sprintf("node-%d", i),
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{192, 168, byte(id), byte(i + 1)})}})
	}
	// The cluster must own its pods' addresses (agents hold entries outside
	// its nodes' ranges out of force): node-0 states the /14 they are in.
	st.Nodes[0].PodCIDRs = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + 4*id), 0, 0}), 14)}
	for i := 0; i < n; i++ {
		app := fmt.Sprintf("app-%d", i%max(identities, 1))
		if i < services*backendsPer {
			app = fmt.Sprintf("svc-%d", i/backendsPer)
		}
		st.Endpoints = append(st.Endpoints, &statesource.Endpoint{
			Namespace: "bulk", Pod: fmt.Sprintf("pod-%d", i), Node: fmt.Sprintf("node-%d", i%50),
			IP:     netip.AddrFrom4([4]byte{10, byte(100 + 4*id + i>>16), byte(i >> 8), byte(i)}),
			Labels: map[string]string{"app": app},
		})
	}
	for s := 0; s < services; s++ {
		st.Services = append(st.Services, statesource.Service{Namespace: "bulk", Name: fmt.Sprintf("svc-%d", s),
			ClusterIP:   netip.AddrFrom4([4]byte{10, 97, byte(s >> 8), byte(s)}),
			Ports:       []statesource.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}},
			Selector:    map[string]string{"app": fmt.Sprintf("svc-%d", s)},
			Annotations: map[string]string{"service.cilium.io/global": "true"}})
	}
	return st
}

func writeJSON(t testing.TB, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// faultEnv is one CA with bundles for east (the agent's cluster) and west
// (the remote), and an agent of east reading west's config file.
type faultEnv struct {
	dir        string
	mesh       *ca.CA
	east, west ca.Bundle
	configDir  string
}

func newFaultEnv(t testing.TB) *faultEnv {
	t.Helper()
	dir := t.TempDir()
	mesh, err := ca.New("fault test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e := &faultEnv{dir: dir, mesh: mesh, configDir: filepath.Join(dir, "remotes")}
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	if e.east, err = mesh.IssueBundle(filepath.Join(dir, "east"), "east", []string{"localhost"}, ips); err != nil {
		t.Fatal(err)
	}
	if e.west, err = mesh.IssueBundle(filepath.Join(dir, "west"), "west", []string{"localhost"}, ips); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(e.configDir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeJSON(t, filepath.Join(dir, "east.json"), SampleState(1))
	return e
}

// pointAt writes east's config for west, to addr.
func (e *faultEnv) pointAt(t testing.TB, addr string) { e.pointRemote(t, "west", addr) }

// pointRemote writes east's config for remote name, to addr.
func (e *faultEnv) pointRemote(t testing.TB, name, addr string) {
	t.Helper()
	cfg := fmt.Sprintf("endpoints: [https://%s]\ntrusted-ca-file: %s\ncert-file: %s\nkey-file: %s\n",
		strings.TrimPrefix(addr, "https://"), e.east.CAFile(), e.east.RemoteCert(), e.east.RemoteKey())
	if err := os.WriteFile(filepath.Join(e.configDir, name), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startAgent runs east's agent over dp until the test ends.
func (e *faultEnv) startAgent(t testing.TB, dp datapath.Datapath, tweak func(*agentsync.Config)) *agentsync.Agent {
	t.Helper()
	cfg := agentsync.Config{ClusterName: "east", ClusterID: 1, ConfigDir: e.configDir, Datapath: dp,
		LocalSource:        &statesource.File{Path: filepath.Join(e.dir, "east.json")},
		ConfigPollInterval: 50 * time.Millisecond, ProbeInterval: 100 * time.Millisecond, ProbeTimeout: time.Second,
		BackoffInitial: 20 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if os.Getenv("CM_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if tweak != nil {
		tweak(&cfg)
	}
	a, err := agentsync.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("agent: %v", err)
		}
	})
	return a
}

func westOf(a *agentsync.Agent) agentsync.RemoteStatus { return remoteOf(a, "west") }

func remoteOf(a *agentsync.Agent, name string) agentsync.RemoteStatus {
	r, _ := a.RemoteStatus(name)
	return r
}

// prefixesOf returns the /32 of every endpoint of st.
func prefixesOf(st *statesource.State) map[netip.Prefix]bool {
	out := make(map[netip.Prefix]bool, len(st.Endpoints))
	for _, e := range st.Endpoints {
		out[netip.PrefixFrom(e.IP, 32)] = true
	}
	return out
}

// copyNoSplice copies src to dst through a buffer: io.Copy between two TCP
// connections splices through pipes that Go keeps in a pool past the test,
// which the leak check would report.
func copyNoSplice(dst io.Writer, src io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{dst}, struct{ io.Reader }{src})
}
