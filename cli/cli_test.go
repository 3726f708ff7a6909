package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/datapath/socklb"
	"github.com/clustermesh/clustermesh/internal/portlock"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/localmesh"
	"github.com/clustermesh/clustermesh/node"
)

// run executes one clustermesh command line in-process.
func run(ctx context.Context, args ...string) (string, error) {
	var out bytes.Buffer
	root := NewRoot()
	root.SetArgs(append([]string{"--log-level", "error"}, args...))
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// freePort is a loopback address leased until t ends (no other test
// process is handed it meanwhile).
func freePort(t *testing.T) string {
	return lease(t).Addr()
}

// lease reserves a port until t ends.
func lease(t *testing.T) *portlock.Lease {
	t.Helper()
	l, err := portlock.Reserve()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Release)
	return l
}

// byHandPolicy lets east's checkout pods accept west's frontends.
const byHandPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: checkout, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: checkout}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: west}}]
`

// startByHand runs the README's "by hand" commands: a CA, two bundles, two
// apiservers and an agent in east reading west and its own cluster,
// enforcing byHandPolicy. It returns the agent's status socket and metrics
// address; cleanups stop the commands and remove the pins.
func startByHand(t *testing.T) (sock, metricsAddr string) {
	ctx, cancel := context.WithCancel(context.Background())
	dir, must := t.TempDir(), mustRun(t)
	must(run(ctx, "ca", "create", "--out", filepath.Join(dir, "ca")))
	if out, err := run(ctx, "ca", "create", "--out", filepath.Join(dir, "ca")); err == nil || !strings.Contains(err.Error(), "--out") {
		t.Errorf("second ca create in the same dir: %v %s (want a refusal that mentions --out)", err, out)
	}
	addrs := map[string]string{}
	for i, c := range []string{"east", "west"} {
		must(run(ctx, "ca", "issue", "--ca", filepath.Join(dir, "ca"), "--out", filepath.Join(dir, c), "--cluster", c, "--ip", "127.0.0.1"))
		st, _ := yaml.Marshal(localmesh.SampleState(i + 1))
		os.WriteFile(filepath.Join(dir, c+".yaml"), st, 0o600)
		addrs[c] = freePort(t)
	}
	done := make(chan error, 3)
	for i, c := range []string{"east", "west"} {
		peer := map[string]string{"east": "west", "west": "east"}[c]
		go func() {
			_, err := run(ctx, "apiserver", "--cluster-name", c, "--cluster-id", fmt.Sprint(i+1), "--cert-dir", filepath.Join(dir, c),
				"--state-file", filepath.Join(dir, c+".yaml"), "--listen", addrs[c], "--peer", peer, "--metrics-addr", "")
			done <- err
		}()
	}
	remotes := filepath.Join(dir, "remotes")
	os.MkdirAll(remotes, 0o700)
	// West, and its own cluster's apiserver, for the identities policy needs.
	for _, c := range []string{"west", "east"} {
		os.WriteFile(filepath.Join(remotes, c), []byte(fmt.Sprintf(
			"endpoints: [https://%s]\ntrusted-ca-file: ../east/ca.crt\ncert-file: ../east/remote-east.crt\nkey-file: ../east/remote-east.key\n",
			addrs[c])), 0o600)
	}
	policies := filepath.Join(dir, "policies")
	os.MkdirAll(policies, 0o755)
	os.WriteFile(filepath.Join(policies, "checkout.yaml"), []byte(byHandPolicy), 0o644)
	sock, metricsAddr = filepath.Join(dir, "agent.sock"), freePort(t)
	pinDir := fmt.Sprintf("/sys/fs/bpf/cm-clitest-%d", os.Getpid())
	cgroup := testCgroup(t)
	go func() {
		_, err := run(ctx, "agent", "--cluster-name", "east", "--cluster-id", "1", "--config-dir", remotes,
			"--state-file", filepath.Join(dir, "east.yaml"), "--status-addr", sock, "--bpf-pin-dir", pinDir, "--metrics-addr", metricsAddr, "--cgroup", cgroup,
			"--node-name", "node-1", "--policy-dir", policies, "--hubble-socket-path", filepath.Join(dir, "hubble.sock"))
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		for i := 0; i < 3; i++ {
			if err := <-done; err != nil {
				t.Errorf("command ended with: %v", err)
			}
		}
		if os.Geteuid() == 0 {
			must(run(context.Background(), "agent", "--cleanup", "--bpf-pin-dir", pinDir, "--cluster-name", "x", "--cluster-id", "1",
				"--config-dir", "x", "--state-file", "x"))
		}
	})
	return sock, metricsAddr
}

// testCgroup is a cgroup of the test's own for the agent's socket load
// balancer, as root (not the machine's root cgroup); "" otherwise.
func testCgroup(t *testing.T) string {
	if os.Geteuid() != 0 {
		return ""
	}
	root, err := socklb.Cgroup2Mount() // /sys/fs/cgroup on a unified host, .../unified on a hybrid one
	if err != nil {
		t.Fatal(err)
	}
	cgroup := filepath.Join(root, fmt.Sprintf("cm-clitest-%d", os.Getpid()))
	if err := os.Mkdir(cgroup, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(cgroup) }) // after the agent stopped (cleanups run last first)
	return cgroup
}

// TestByHand runs the README's "by hand" commands, then `status`,
// `observe` and the metrics against east's agent.
func TestByHand(t *testing.T) {
	sock, metricsAddr := startByHand(t)
	ctx, must := context.Background(), mustRun(t)
	var st node.Status
	testenv.WaitFor(t, 30*time.Second, "east's agent sees west ready, and its own cluster", func() bool {
		out, err := run(ctx, "status", "--agent", sock, "-o", "json")
		if err != nil || json.Unmarshal([]byte(out), &st) != nil {
			return false
		}
		return len(st.Remotes) == 1 && st.Remotes[0].Ready && len(st.Services) == 1 && st.Services[0].RemoteTotal == 3 &&
			st.Local != nil && st.Local.Ready && st.Policy != nil && st.Policy.Enforcing
	})
	// The policy: east's checkout identity accepts west's frontend and the
	// host; every identity of both clusters, and the host, known.
	if p := st.Policy; p.Rules != 1 || p.Identities != 5 || p.PolicyEntries != 2 || p.LastPolicyError != "" {
		t.Errorf("policy status %+v: want 1 rule, 5 identities (2 per cluster and the host), 2 entries", p)
	}
	if os.Geteuid() == 0 {
		// No flows yet (no endpoint has an interface here): observe answers
		// with none, through the agent's Observer socket (beside sock).
		if out, err := run(ctx, "observe", "--server", "unix://"+filepath.Join(filepath.Dir(sock), "hubble.sock")); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("observe: %v %q, want no flows and no error", err, out)
		}
	}
	table := must(run(ctx, "status", "--agent", sock))
	for _, want := range []string{"REMOTE", "west", "east (local)", "shop/checkout", "3 (west=3/3)", "3 from local",
		"Policy: enforcing, 1 rules, 2 entries, 5 identities", "shop/checkout-2 (-): no-interface"} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}
	services := must(run(ctx, "status", "--agent", sock, "--services"))
	if !strings.Contains(services, "3 (west=3/3)") || strings.Contains(services, "CONNECTED") {
		t.Errorf("status --services: want only the services table:\n%s", services)
	}
	checkByHandMetrics(t, metricsAddr)
	if os.Geteuid() == 0 && st.Datapath != "ebpf" {
		t.Errorf("as root the agent should use eBPF maps, says %q", st.Datapath)
	}
}

func checkByHandMetrics(t *testing.T, addr string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`clustermesh_agent_remote_ready{remote="west"} 1`, `clustermesh_agent_remote_entries{kind="ipcache",remote="west"} 4`,
		"clustermesh_policy_entries 2", "clustermesh_policy_enforcing 1",
		`clustermesh_agent_service_selected_backends{from="local",frontend="10.96.0.10:80/TCP",service="shop/checkout"} 3`,
		`clustermesh_agent_service_remote_backends{frontend="10.96.0.10:80/TCP",service="shop/checkout"} 3`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestStatusWithoutAgentSaysWhatToDo(t *testing.T) {
	_, err := run(context.Background(), "status", "--agent", filepath.Join(t.TempDir(), "none.sock"), "--timeout", "1s")
	if err == nil || !strings.Contains(err.Error(), "clustermesh agent") {
		t.Errorf("want an error that points at `clustermesh agent`, got %v", err)
	}
}

func TestHelpExplains(t *testing.T) {
	for _, cmd := range [][]string{{"--help"}, {"demo", "--help"}, {"agent", "--help"}, {"apiserver", "--help"}, {"ca", "issue", "--help"}, {"status", "--help"}} {
		out, err := run(context.Background(), cmd...)
		if err != nil || len(out) < 300 {
			t.Errorf("%v: %v, %d bytes of help", cmd, err, len(out))
		}
	}
	if _, err := run(context.Background(), "apiserver", "--cluster-name", "east"); err == nil || !strings.Contains(err.Error(), "required") {
		t.Errorf("missing required flags: %v", err)
	}
}
