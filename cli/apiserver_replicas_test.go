package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/etcdtest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/meshapiserver"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// TestAPIServerReplicasLeaderSIGKILL: two `clustermesh apiserver` processes
// publish east into a real three-member etcd cluster (internal/etcdtest),
// and a real agent of west (agentsync on an in-memory datapath) reads east
// from all three members as remote-west. The leader process is killed with
// SIGKILL while it publishes a change of half of its 10,000 endpoints. The
// standby process takes over within the bound; the agent's datapath never
// loses an address desired before and after the change, never sees one
// change identity, and ends with exactly the new state.
func TestAPIServerReplicasLeaderSIGKILL(t *testing.T) {
	dir := t.TempDir()
	tmp, err := os.MkdirTemp("", "cmk") // TMPDIR of the processes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	mesh, err := ca.New("clustermesh test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	loopback := []net.IP{net.ParseIP("127.0.0.1")}
	east, err := mesh.IssueBundle(filepath.Join(dir, "east"), "east", []string{"localhost"}, loopback)
	if err != nil {
		t.Fatal(err)
	}
	west, err := mesh.IssueBundle(filepath.Join(dir, "west"), "west", []string{"localhost"}, loopback)
	if err != nil {
		t.Fatal(err)
	}
	cl := etcdtest.Start(t, etcdtest.Config{
		CA: mesh, CAFile: east.CAFile(), ServerCert: east.ServerCert(), ServerKey: east.ServerKey(),
		RootUsers: []string{meshapiserver.AdminUser("east")},
		MaxTxnOps: meshapiserver.ExternalEtcdMinTxnOps, MaxRequestBytes: meshapiserver.ExternalEtcdMinRequestBytes,
	})
	n := 10000
	if testenv.RaceEnabled {
		// The members and the agent share this race-instrumented process:
		// 10,000 entries made them too slow for the agent's probe.
		n = 4000
	}
	state := filepath.Join(dir, "east.yaml")
	// A first state whose identities (b0..b9) a numbers before those of
	// the big state: b, numbering on its own, would number them otherwise.
	writeState(t, state, replicasState(100000, 10))
	bin := buildClustermesh(t)
	args := func(name string) []string {
		return []string{"--cluster-name", "east", "--cluster-id", "1", "--cert-dir", east.Dir, "--state-file", state,
			"--peer", "west", "--metrics-addr", "", "--etcd-endpoints", strings.Join(cl.Endpoints(), ","),
			"--replica-name", name, "--election-ttl", "2s"}
	}
	a := startProcessWaiting(t, bin, tmp, readyURL, args("a")...)
	dp := newIdentityWatch()
	agent := startWestAgent(t, dir, west, cl.Endpoints(), dp)
	writeState(t, state, replicasState(0, n))
	startProcessWaiting(t, bin, tmp, regexp.MustCompile(`standby: campaigning`), args("b")...)
	t.Cleanup(func() {
		if t.Failed() {
			r, _ := agent.RemoteStatus("east")
			t.Logf("the agent's status of east: %+v", r)
		}
	})
	testenv.WaitFor(t, 60*time.Second, "the agent holds east's endpoints", func() bool {
		r, ok := agent.RemoteStatus("east")
		return ok && r.Ready && dp.eastEntries() == n
	})
	dp.keep(func(p netip.Prefix) bool { return replicaIndex(p) >= n/2 })

	// Kill a when the first entry of the change is in etcd.
	admin := cl.Client(east.AdminCert(), east.AdminKey())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wch := admin.Watch(ctx, wire.IPCacheKey(replicaIP(n)))
	writeState(t, state, replicasState(n/2, n))
	select {
	case <-wch:
	case <-time.After(60 * time.Second):
		t.Fatal("the change's first entry not published after 60s")
	}
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	died := time.Now()
	resp, err := admin.Get(ctx, wire.IPCacheKey(replicaIP(0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("leader killed; the entries to delete still published: %v", len(resp.Kvs) == 1)

	testenv.WaitFor(t, 2*time.Minute, "the agent holds the changed state", func() bool {
		return dp.eastEntries() == n && dp.has(replicaPrefix(n+n/2-1)) && !dp.has(replicaPrefix(0))
	})
	// How fast is apiserver.takeover_s's business (make bench); here the
	// takeover must happen, within the wait's deadline.
	t.Logf("the agent holds the new state %s after the leader's death (election TTL 2s)", time.Since(died).Round(time.Millisecond))
	leader, err := admin.Get(ctx, meshapiserver.ElectionPrefix("east")+"/", clientv3.WithFirstCreate()...)
	if err != nil || len(leader.Kvs) != 1 || string(leader.Kvs[0].Value) != "b" {
		t.Errorf("the election's leader: %v %v, want b", leader, err)
	}
	dp.check(t, n/2, n)
}

// startProcessWaiting starts `bin apiserver args` with TMPDIR tmp and
// waits until its log has a line matching wait.
func startProcessWaiting(t *testing.T, bin, tmp string, wait *regexp.Regexp, args ...string) *apiserverProcess {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"apiserver"}, args...)...)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &apiserverProcess{cmd: cmd, exit: make(chan error, 1)}
	matched := make(chan struct{})
	var logMu sync.Mutex
	var log strings.Builder
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			logMu.Lock()
			log.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			if wait.MatchString(sc.Text()) {
				once.Do(func() { close(matched) })
			}
		}
		io.Copy(io.Discard, stderr)
		p.exit <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exit
		if t.Failed() {
			logMu.Lock()
			t.Logf("%s:\n%s", strings.Join(args, " "), log.String())
			logMu.Unlock()
		}
	})
	select {
	case <-matched:
		return p
	case err := <-p.exit:
		p.exit <- err
		logMu.Lock()
		defer logMu.Unlock()
		t.Fatalf("apiserver exited: %v\n%s", err, log.String())
	case <-time.After(60 * time.Second):
		logMu.Lock()
		defer logMu.Unlock()
		t.Fatalf("no %q after 60s:\n%s", wait, log.String())
	}
	return nil
}

// startWestAgent runs west's agent on dp, reading east from endpoints as
// remote-west.
func startWestAgent(t *testing.T, dir string, west ca.Bundle, endpoints []string, dp datapath.Datapath) *agentsync.Agent {
	t.Helper()
	configDir := filepath.Join(dir, "west-config")
	if err := os.MkdirAll(configDir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeState(t, filepath.Join(configDir, "east"), fmt.Sprintf("endpoints: [%s]\ntrusted-ca-file: %s\ncert-file: %s\nkey-file: %s\n",
		strings.Join(endpoints, ", "), west.CAFile(), west.RemoteCert(), west.RemoteKey()))
	westState := filepath.Join(dir, "west.yaml")
	writeState(t, westState, "nodes:\n- {name: west-1, ips: [192.168.2.1], podCIDRs: [10.20.0.0/16]}\n")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	agent, err := agentsync.New(agentsync.Config{
		ClusterName: "west", ClusterID: 2, ConfigDir: configDir, Datapath: dp,
		LocalSource:   &statesource.File{Path: westState, PollInterval: 100 * time.Millisecond, Logger: log},
		ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 10 * time.Second, // members in this process
		BackoffInitial: 50 * time.Millisecond, BackoffMax: time.Second, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return agent
}

func writeState(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil { // the source sees whole files
		t.Fatal(err)
	}
}

// replicasState is east with n endpoints from first on 10 nodes, labelled
// app=a<i%50> below 10,000 and app=b<i%20> from there (other identities).
func replicasState(first, n int) string {
	var b strings.Builder
	b.WriteString("nodes:\n")
	for j := range 10 {
		fmt.Fprintf(&b, "- {name: east-%d, ips: [192.168.1.%d], podCIDRs: [10.%d.0.0/16]}\n", j, j+1, j)
	}
	b.WriteString("namespaces:\n- {name: shop}\nendpoints:\n")
	for i := first; i < first+n; i++ {
		app := fmt.Sprintf("a%d", i%50)
		if i >= 10000 {
			app = fmt.Sprintf("b%d", i%20)
		}
		fmt.Fprintf(&b, "- {namespace: shop, pod: p%d, ip: %s, node: east-%d, labels: {app: %s}}\n", i, replicaIP(i), i%10, app)
	}
	return b.String()
}

func replicaIP(i int) string { return fmt.Sprintf("10.%d.%d.%d", i%10, i/10/250, i/10%250+1) }

func replicaPrefix(i int) netip.Prefix {
	return netip.PrefixFrom(netip.MustParseAddr(replicaIP(i)), 32)
}

// replicaIndex is the endpoint index of an address of replicaIP, -1 for
// another.
func replicaIndex(p netip.Prefix) int {
	b := p.Addr().As4()
	if b[0] != 10 || b[3] == 0 || b[1] > 9 {
		return -1
	}
	return (int(b[2])*250+int(b[3])-1)*10 + int(b[1])
}

// identityWatch is an in-memory datapath that records every violation of
// what a takeover must keep: an east address deleted that must stay, an
// east address whose identity changes while it is held.
type identityWatch struct {
	*datapath.Memory
	mu         sync.Mutex
	mustStay   func(netip.Prefix) bool // guarded by mu
	violations []string                // guarded by mu
	count      int                     // guarded by mu
}

func newIdentityWatch() *identityWatch {
	return &identityWatch{Memory: datapath.NewMemory(), mustStay: func(netip.Prefix) bool { return false }}
}

func (w *identityWatch) violate(format string, args ...any) {
	w.count++
	if len(w.violations) < 20 {
		w.violations = append(w.violations, fmt.Sprintf(format, args...))
	}
}

func (w *identityWatch) upserted(p netip.Prefix, e datapath.IPCacheEntry) {
	if e.ClusterID != 1 {
		return
	}
	if old, ok := w.LookupIPCache(p.Addr()); ok && old.ClusterID == 1 && old.Identity != e.Identity {
		w.violate("%s: identity %d → %d", p, old.Identity, e.Identity)
	}
}

func (w *identityWatch) UpsertIPCache(p netip.Prefix, e datapath.IPCacheEntry) error {
	w.mu.Lock()
	w.upserted(p, e)
	w.mu.Unlock()
	return w.Memory.UpsertIPCache(p, e)
}

func (w *identityWatch) UpsertIPCacheBatch(ps []netip.Prefix, es []datapath.IPCacheEntry) error {
	w.mu.Lock()
	for i := range ps {
		w.upserted(ps[i], es[i])
	}
	w.mu.Unlock()
	return w.Memory.UpsertIPCacheBatch(ps, es)
}

func (w *identityWatch) DeleteIPCache(p netip.Prefix) error {
	w.mu.Lock()
	if w.mustStay(p) {
		w.violate("%s deleted while desired", p)
	}
	w.mu.Unlock()
	return w.Memory.DeleteIPCache(p)
}

// keep makes the deletion of an address f names a violation.
func (w *identityWatch) keep(f func(netip.Prefix) bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.mustStay = f
}

func (w *identityWatch) east() map[netip.Prefix]datapath.IPCacheEntry {
	all, _ := w.IPCache()
	out := map[netip.Prefix]datapath.IPCacheEntry{}
	for p, e := range all {
		if e.ClusterID == 1 {
			out[p] = e
		}
	}
	return out
}

func (w *identityWatch) eastEntries() int { return len(w.east()) }

func (w *identityWatch) has(p netip.Prefix) bool {
	e, ok := w.Memory.LookupIPCache(p.Addr())
	return ok && e.ClusterID == 1
}

// check fails t on any violation, and unless the datapath holds exactly
// east's endpoints [first, first+n), one identity per label set.
func (w *identityWatch) check(t *testing.T, first, n int) {
	t.Helper()
	w.mu.Lock()
	for _, v := range w.violations {
		t.Error(v)
	}
	if w.count > len(w.violations) {
		t.Errorf("… %d violations in all", w.count)
	}
	w.mu.Unlock()
	byLabels := map[string]uint32{}
	held := w.east()
	for p, e := range held {
		i := replicaIndex(p)
		if i < first || i >= first+n {
			t.Errorf("%s held, not desired", p)
			continue
		}
		labels := fmt.Sprintf("a%d", i%50)
		if i >= 10000 {
			labels = fmt.Sprintf("b%d", i%20)
		}
		if id, ok := byLabels[labels]; ok && id != e.Identity {
			t.Errorf("app=%s has identities %d and %d", labels, id, e.Identity)
		}
		byLabels[labels] = e.Identity
	}
	if len(held) != n {
		t.Errorf("%d east entries held, want %d", len(held), n)
	}
}
