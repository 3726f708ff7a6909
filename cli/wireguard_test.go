package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/localmesh"
	"github.com/clustermesh/clustermesh/node"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wireguard"
)

// freeUDPPort is a port for a WireGuard device, leased until t ends.
func freeUDPPort(t *testing.T) string {
	return strconv.Itoa(lease(t).Port)
}

// proc is a clustermesh command running in-process until stopped.
type proc struct {
	cancel context.CancelFunc
	done   chan error
}

func start(args ...string) *proc {
	ctx, cancel := context.WithCancel(context.Background())
	p := &proc{cancel: cancel, done: make(chan error, 1)}
	go func() {
		_, err := run(ctx, args...)
		p.done <- err
	}()
	return p
}

func (p *proc) stop(t *testing.T, what string) {
	t.Helper()
	p.cancel()
	select {
	case err := <-p.done:
		if err != nil {
			t.Errorf("%s ended with: %v", what, err)
		}
	case <-time.After(20 * time.Second):
		t.Errorf("%s did not stop", what)
	}
}

// mustRun returns what fails t when a command failed, and otherwise
// returns its output: mustRun(t)(run(ctx, args...)).
func mustRun(t *testing.T) func(out string, err error) string {
	return func(out string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return out
	}
}

// wgCluster is a cluster of TestAgentWireGuard: an apiserver publishing
// its nodes' keys and the agent of its node-1.
type wgCluster struct {
	name, peer, id, addr, keys, device, port, sock, pinDir, keyFile string
	agent                                                           *proc
}

// wgEnv is TestAgentWireGuard's mesh: east (51) and west (52) on
// loopback, each agent encrypting to the other cluster.
type wgEnv struct {
	dir      string
	clusters []*wgCluster
	wc       *wgctrl.Client
}

// startWGEnv writes the PKI, the states and the remotes' configs, starts
// both apiservers and both agents; cleanups stop them and remove the pins.
func startWGEnv(t *testing.T) *wgEnv {
	e := &wgEnv{dir: t.TempDir(), clusters: []*wgCluster{{name: "east", peer: "west", id: "51"}, {name: "west", peer: "east", id: "52"}}}
	ctx, dir := context.Background(), e.dir
	mustRun(t)(run(ctx, "ca", "create", "--out", filepath.Join(dir, "ca")))
	for _, c := range e.clusters {
		mustRun(t)(run(ctx, "ca", "issue", "--ca", filepath.Join(dir, "ca"), "--out", filepath.Join(dir, c.name), "--cluster", c.name, "--ip", "127.0.0.1"))
		var id int
		fmt.Sscan(c.id, &id)
		st := localmesh.SampleState(id)
		for n := range st.Nodes { // on loopback: handshakes stay on this machine
			st.Nodes[n].IPs = []netip.Addr{netip.AddrFrom4([4]byte{127, 0, byte(id), byte(n + 1)})}
		}
		b, _ := yaml.Marshal(st)
		os.WriteFile(filepath.Join(dir, c.name+".yaml"), b, 0o600)
		c.addr, c.keys, c.device, c.port = freePort(t), filepath.Join(dir, c.name+"-keys"), "cmwgcli-"+c.name, freeUDPPort(t)
		c.sock, c.keyFile = filepath.Join(dir, c.name+".sock"), filepath.Join(dir, c.name+"-wg.key")
		c.pinDir = fmt.Sprintf("/sys/fs/bpf/cm-clitest-wg-%d-%s", os.Getpid(), c.name)
	}
	for i, c := range e.clusters {
		p := start("apiserver", "--cluster-name", c.name, "--cluster-id", c.id, "--cert-dir", filepath.Join(dir, c.name),
			"--state-file", filepath.Join(dir, c.name+".yaml"), "--listen", c.addr, "--peer", c.peer, "--metrics-addr", "",
			"--node-keys-dir", c.keys)
		t.Cleanup(func() { p.stop(t, c.name+"'s apiserver") })
		remotes, peer := filepath.Join(dir, c.name+"-remotes"), e.clusters[1-i]
		os.MkdirAll(remotes, 0o700)
		os.WriteFile(filepath.Join(remotes, c.peer), []byte(fmt.Sprintf(
			"endpoints: [https://%s]\ntrusted-ca-file: %s/ca.crt\ncert-file: %s/remote-%s.crt\nkey-file: %s/remote-%s.key\n",
			peer.addr, filepath.Join(dir, c.name), filepath.Join(dir, c.name), c.name, filepath.Join(dir, c.name), c.name)), 0o600)
	}
	for _, c := range e.clusters {
		c.agent = start(e.agentArgs(c)...)
	}
	t.Cleanup(func() {
		for _, c := range e.clusters {
			if c.agent != nil {
				c.agent.stop(t, c.name+"'s agent")
			}
			mustRun(t)(run(ctx, "agent", "--cleanup", "--bpf-pin-dir", c.pinDir, "--cluster-name", "x", "--cluster-id", "1", "--config-dir", "x", "--state-file", "x"))
		}
	})
	var err error
	if e.wc, err = wgctrl.New(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.wc.Close() })
	return e
}

func (e *wgEnv) agentArgs(c *wgCluster, extra ...string) []string {
	return append([]string{"agent", "--cluster-name", c.name, "--cluster-id", c.id, "--config-dir", filepath.Join(e.dir, c.name+"-remotes"),
		"--state-file", filepath.Join(e.dir, c.name+".yaml"), "--status-addr", c.sock, "--bpf-pin-dir", c.pinDir, "--metrics-addr", "",
		"--socket-lb=false", "--enable-wireguard", "--node-name", "node-1", "--wireguard-device", c.device, "--wireguard-port", c.port,
		"--wireguard-key-file", c.keyFile, "--node-keys-dir", c.keys, "--wireguard-underlay-mtu", "1500",
		"--hubble-socket-path", filepath.Join(e.dir, c.name+"-hubble.sock")}, extra...)
}

// status is c's agent's status as `clustermesh status -o json` prints it.
func (e *wgEnv) status(c *wgCluster) (node.Status, string) {
	out, err := run(context.Background(), "status", "--agent", c.sock, "-o", "json")
	var st node.Status
	if err != nil || json.Unmarshal([]byte(out), &st) != nil {
		return node.Status{}, out
	}
	return st, out
}

// hasPeer: c's device has exactly one peer, with key.
func (e *wgEnv) hasPeer(c *wgCluster, key string) bool {
	dev, err := e.wc.Device(c.device)
	return err == nil && len(dev.Peers) == 1 && dev.Peers[0].PublicKey.String() == key
}

// waitKeys waits until each agent's key differs from old's and has the
// device of the other cluster's node-1 as its only peer, and returns them.
func (e *wgEnv) waitKeys(t *testing.T, what string, old map[string]string) map[string]string {
	t.Helper()
	keys := map[string]string{}
	testenv.WaitFor(t, 30*time.Second, what, func() bool {
		for _, c := range e.clusters {
			st, _ := e.status(c)
			if st.WireGuard == nil || !st.WireGuard.Enabled || len(st.Remotes) != 1 || !st.Remotes[0].Ready ||
				st.WireGuard.PublicKey == old[c.name] || old != nil && st.WireGuard.KeyRotatedAt.IsZero() {
				return false
			}
			keys[c.name] = st.WireGuard.PublicKey
		}
		return e.hasPeer(e.clusters[0], keys["west"]) && e.hasPeer(e.clusters[1], keys["east"])
	})
	return keys
}

// TestAgentWireGuard runs the README's encryption commands: two apiservers
// with --node-keys-dir and an agent per cluster with --enable-wireguard
// (node-1 of each; node-2 publishes no key). Each agent's device gets the
// other cluster's node-1 as a peer, node-2 rejected; `status` shows the
// WireGuard section (table and JSON, the JSON still readable as the old
// status); SIGUSR1 rotates the keys and each reaches the other device; a
// restart with --rotate-wireguard-key publishes a new key that reaches the
// peer; nothing is left when the agents stop.
func TestAgentWireGuard(t *testing.T) {
	testenv.RequireRoot(t)
	e := startWGEnv(t)
	keys := e.waitKeys(t, "each device has the other cluster's node-1 as its peer", nil)
	east := e.clusters[0]
	if got, _ := statesource.ReadNodeKey(east.keys, "node-1"); got != keys["east"] {
		t.Errorf("east's published key %q, its device's %q", got, keys["east"])
	}
	checkWireGuardStatus(t, e, keys["east"])

	// SIGUSR1: both agents (one process) rotate; each new key reaches the
	// other cluster's device through its apiserver.
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	rotated := e.waitKeys(t, "the rotated keys in both devices", keys)

	// East stops: its device is gone, its published key stays (west keeps
	// the peer). A restart with --rotate-wireguard-key publishes a new key.
	east.agent.stop(t, "east's agent")
	east.agent = nil
	if _, err := netlink.LinkByName(east.device); err == nil {
		t.Errorf("%s left behind after the agent stopped", east.device)
	}
	if !e.hasPeer(e.clusters[1], rotated["east"]) {
		t.Error("west lost east's peer while east's agent restarts")
	}
	east.agent = start(e.agentArgs(east, "--rotate-wireguard-key")...)
	testenv.WaitFor(t, 20*time.Second, "east's key rotated at start in west's device", func() bool {
		st, _ := e.status(east)
		return st.WireGuard != nil && st.WireGuard.Enabled && st.WireGuard.PublicKey != rotated["east"] &&
			e.hasPeer(e.clusters[1], st.WireGuard.PublicKey)
	})

	for _, c := range e.clusters {
		c.agent.stop(t, c.name+"'s agent")
		c.agent = nil
		if _, err := netlink.LinkByName(c.device); err == nil {
			t.Errorf("%s left behind", c.device)
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: wireguard.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst != nil && (strings.HasPrefix(r.Dst.String(), "10.51.") || strings.HasPrefix(r.Dst.String(), "10.52.")) {
			t.Errorf("route left behind: %s", r.Dst)
		}
	}
}

// checkWireGuardStatus checks east's status, in JSON and as a table.
func checkWireGuardStatus(t *testing.T, e *wgEnv, key string) {
	t.Helper()
	east := e.clusters[0]
	st, raw := e.status(east)
	wg := st.WireGuard
	if wg.Device != east.device || wg.Implementation == "" || wg.MTU != 1440 || wg.Peers != 1 || len(wg.Clusters) != 1 || wg.Clusters[0].Cluster != "west" ||
		len(wg.Rejected) != 1 || wg.Rejected[0].Node != "node-2" || !strings.Contains(wg.Rejected[0].Reason, "no WireGuard public key") {
		t.Errorf("east's WireGuard status: %+v", wg)
	}
	var old agentsync.Status // a client of the status before WireGuard
	if err := json.Unmarshal([]byte(raw), &old); err != nil || old.Cluster != "east" || len(old.Remotes) != 1 || len(old.Services) != 1 {
		t.Errorf("the JSON status is not readable as agentsync.Status: %v %+v", err, old)
	}
	table := mustRun(t)(run(context.Background(), "status", "--agent", east.sock))
	t.Logf("clustermesh status:\n%s", table)
	for _, want := range []string{"REMOTE", "shop/checkout", "Encryption: WireGuard on (", "device cmwgcli-east, port " + east.port,
		"MTU 1440 (underlay 1500), node encryption off", "Public key: " + key, "WIREGUARD PEERS", "west ",
		"warning: WireGuard peer west/node-2 rejected: no WireGuard public key published"} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}
}

func TestAgentWireGuardFlags(t *testing.T) {
	base := []string{"agent", "--cluster-name", "east", "--cluster-id", "1", "--config-dir", "x", "--state-file", "x"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--node-encryption"}, "--node-encryption needs --enable-wireguard"},
		{[]string{"--wireguard-port", "1"}, "--wireguard-port needs --enable-wireguard"},
		{[]string{"--enable-wireguard"}, "--enable-wireguard needs --node-name"},
	} {
		_, err := run(context.Background(), append(base, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
	help, _ := run(context.Background(), "agent", "--help")
	for _, flag := range []string{"--enable-wireguard", "--wireguard-device", "--wireguard-port", "--wireguard-key-file", "--node-encryption",
		"--node-name", "--rotate-wireguard-key", "--node-keys-dir", "SIGUSR1"} {
		if !strings.Contains(help, flag) {
			t.Errorf("agent --help does not mention %s", flag)
		}
	}
	if help, _ := run(context.Background(), "apiserver", "--help"); !strings.Contains(help, "--node-keys-dir") {
		t.Error("apiserver --help does not mention --node-keys-dir")
	}
}
