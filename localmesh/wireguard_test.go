package localmesh

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/internal/portlock"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/meshapiserver"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wireguard"
)

// wgCluster is one cluster of the WireGuard mesh test: its node-1 agent
// runs a WireGuard device in the host namespace (device names and ports are
// unique on the machine); node-2's key is published by the test, as an
// agent on another machine would.
type wgCluster struct {
	name, device string
	id           int
	port         int
	keysDir      string
	node2Key     string
	wg           *wireguard.Agent
}

// freeUDPPort returns a port nobody listens on (on either family),
// leased until t ends.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	l, err := portlock.Reserve()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Release)
	return l.Port
}

// peerConfig is a device peer as the test compares it.
type peerConfig struct {
	key      string
	endpoint string
	allowed  string
}

func (p peerConfig) String() string { return p.key + " " + p.endpoint + " " + p.allowed }

func devicePeers(t *testing.T, wc *wgctrl.Client, name string) ([]peerConfig, error) {
	dev, err := wc.Device(name)
	if err != nil {
		return nil, err
	}
	var out []peerConfig
	for _, p := range dev.Peers {
		var allowed []string
		for _, a := range p.AllowedIPs {
			allowed = append(allowed, a.String())
		}
		sort.Strings(allowed)
		ep := ""
		if p.Endpoint != nil {
			ep = p.Endpoint.String()
		}
		out = append(out, peerConfig{key: p.PublicKey.String(), endpoint: ep, allowed: strings.Join(allowed, ",")})
	}
	slices.SortFunc(out, func(a, b peerConfig) int { return strings.Compare(a.allowed, b.allowed) })
	return out, nil
}

// wantPeers is what local's device must hold for remote's nodes: each
// node's published key, its IP on local's port (every node of a mesh
// listens on the same port; here each cluster has its own, the two devices
// share one namespace), its pod CIDR.
func wantPeers(local, remote *wgCluster) []peerConfig {
	keys := []string{remote.wg.PublicKey(), remote.node2Key}
	var out []peerConfig
	for n := 1; n <= 2; n++ {
		out = append(out, peerConfig{key: keys[n-1],
			endpoint: fmt.Sprintf("127.0.%d.%d:%d", remote.id, n, local.port),
			allowed:  fmt.Sprintf("10.%d.%d.0/24", remote.id, n)})
	}
	return out
}

// wgRoutes lists the routes installed by the wireguard package (protocol
// RouteProtocol) to the given pod CIDRs, on any device.
func wgRoutes(t *testing.T, prefixes ...string) []string {
	t.Helper()
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: wireguard.RouteProtocol},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range routes {
		for _, p := range prefixes {
			if r.Dst != nil && r.Dst.String() == p {
				out = append(out, fmt.Sprintf("%s dev %d table %d", r.Dst, r.LinkIndex, r.Table))
			}
		}
	}
	sort.Strings(out)
	return out
}

// TestWireGuardMesh: two clusters on loopback, each node-1 agent with
// WireGuard, each apiserver reading its cluster's node keys directory.
// After sync each device has the other cluster's nodes as peers (keys,
// endpoints, allowed IPs) and a route per remote pod CIDR; a key rotation on
// east reaches west's device through east's keys directory, apiserver and
// the mesh; disconnecting east from west removes all of east's peers from
// west's device; when the agents stop, no device, route or socket is left.
func TestWireGuardMesh(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	clusters, specs := newWGClusters(t, dir)
	east, west := clusters["east"], clusters["west"]
	podCIDRs := []string{"10.41.1.0/24", "10.41.2.0/24", "10.42.1.0/24", "10.42.2.0/24"}

	start := time.Now()
	keysDirs, devices := map[string]string{}, map[string]wireguard.Config{}
	for name, c := range clusters {
		keysDirs[name] = c.keysDir
		devices[name] = wireguard.Config{DeviceName: c.device, ListenPort: c.port, UnderlayMTU: 1500,
			PrivateKeyFile: filepath.Join(dir, c.name, "wireguard.key")}
	}
	m, agents, closeMesh := startWireGuardMesh(t, specs, keysDirs, devices)
	for name, c := range clusters {
		c.wg = agents[name]
	}
	wc, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()

	waitPeers(t, wc, "east's device has west's nodes as peers", east, wantPeers(east, west))
	waitPeers(t, wc, "west's device has east's nodes as peers", west, wantPeers(west, east))
	t.Logf("both devices configured %s after start", time.Since(start).Round(time.Millisecond))
	// Routes are added right after the peers.
	testenv.WaitFor(t, wait, "a route per remote pod CIDR (two per device)", func() bool { return len(wgRoutes(t, podCIDRs...)) == 4 })
	for _, c := range clusters {
		st := c.wg.Status()
		if !st.Enabled || st.Peers != 2 || len(st.Rejected) != 0 || len(st.Clusters) != 1 || st.LastError != "" {
			t.Errorf("%s status: %+v", c.name, st)
		}
	}

	// Rotation on east: west's device swaps the peer's key.
	oldKey := east.wg.PublicKey()
	rotated := time.Now()
	newKey, err := east.wg.RotateKey()
	if err != nil || newKey == oldKey {
		t.Fatalf("rotate: %q %v", newKey, err)
	}
	waitPeers(t, wc, "west's device has east's new key", west, wantPeers(west, east))
	t.Logf("east's new key reached west's device in %s", time.Since(rotated).Round(time.Millisecond))

	// West disconnects from east: every east peer and route leaves west's
	// device; east keeps west's.
	if err := m.Disconnect("west", "east"); err != nil {
		t.Fatal(err)
	}
	waitPeers(t, wc, "west's device has no peer left after the disconnect", west, nil)
	if got := wgRoutes(t, podCIDRs[:2]...); len(got) != 0 {
		t.Errorf("routes to east's pod CIDRs left on west's device: %v", got)
	}
	if got, _ := devicePeers(t, wc, east.device); len(got) != 2 {
		t.Errorf("east lost its peers: %v", got)
	}

	// The agents stop: nothing is left.
	if err := closeMesh(); err != nil {
		t.Errorf("close: %v", err)
	}
	checkWGClustersGone(t, clusters, podCIDRs)
}

// newWGClusters makes east and west, each with node-2's key published in
// its node keys directory, and their specs.
func newWGClusters(t *testing.T, dir string) (map[string]*wgCluster, []ClusterSpec) {
	t.Helper()
	clusters := map[string]*wgCluster{}
	var specs []ClusterSpec
	for i, name := range []string{"east", "west"} {
		c := &wgCluster{name: name, device: "cmwgtest-" + name, id: 41 + i, port: freeUDPPort(t),
			keysDir: filepath.Join(dir, name, "node-keys")}
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		c.node2Key = k.PublicKey().String()
		if err := statesource.WriteNodeKey(c.keysDir, "node-2", c.node2Key); err != nil {
			t.Fatal(err)
		}
		clusters[name] = c
		// Node IPs on loopback: the handshakes the devices start stay on
		// this machine (they reach no peer: the test checks configuration;
		// the wireguard package's tests check traffic).
		st := SampleState(c.id)
		for n := range st.Nodes {
			st.Nodes[n].IPs = []netip.Addr{netip.AddrFrom4([4]byte{127, 0, byte(c.id), byte(n + 1)})}
		}
		specs = append(specs, ClusterSpec{Name: name, ID: uint32(c.id), State: st})
	}
	return clusters, specs
}

// startWireGuardMesh starts a mesh of specs in which each cluster's
// apiserver reads the node keys of keysDirs[cluster] and its node-1 agent
// runs the WireGuard device devices[cluster], and waits until every device
// is open. It returns the WireGuard agents by cluster, and closeMesh, which
// stops the mesh (the test's cleanup stops it otherwise).
func startWireGuardMesh(t *testing.T, specs []ClusterSpec, keysDirs map[string]string, devices map[string]wireguard.Config) (m *Mesh, agents map[string]*wireguard.Agent, closeMesh func() error) {
	t.Helper()
	agents = map[string]*wireguard.Agent{}
	var hookErr error
	m = startMeshWith(t, Options{
		Clusters: specs,
		APIServer: func(cfg *meshapiserver.Config) {
			cfg.Source.(*statesource.File).NodeKeysDir = keysDirs[cfg.ClusterName]
		},
		Agent: func(cfg *agentsync.Config) {
			a, err := attachWireGuard(cfg, devices[cfg.ClusterName], keysDirs[cfg.ClusterName])
			if err != nil {
				hookErr = err // kept: a later cluster must not clear it
			}
			agents[cfg.ClusterName] = a
		},
	})
	if hookErr != nil {
		t.Fatal(hookErr)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			m.Close()
		}
	})
	for name, a := range agents {
		select {
		case <-a.Ready():
		case <-time.After(wait):
			t.Fatalf("%s's device did not open: %+v", name, a.Status())
		}
	}
	return m, agents, func() error {
		closed = true
		return m.Close()
	}
}

// waitPeers waits until local's device holds exactly want; on timeout, it
// says what the device holds.
func waitPeers(t *testing.T, wc *wgctrl.Client, what string, local *wgCluster, want []peerConfig) {
	t.Helper()
	var got []peerConfig
	var err error
	deadline := time.Now().Add(wait)
	testenv.WaitFor(t, wait+time.Second, what, func() bool {
		got, err = devicePeers(t, wc, local.device)
		ok := err == nil && slices.Equal(got, want)
		if !ok && time.Now().After(deadline) {
			t.Fatalf("%s: %s holds %v (%v), want %v; status %+v", what, local.device, got, err, want, local.wg.Status())
		}
		return ok
	})
}

// checkWGClustersGone fails if a cluster's device, UAPI socket or route to
// one of podCIDRs is left, or its agent still reports encryption on.
func checkWGClustersGone(t *testing.T, clusters map[string]*wgCluster, podCIDRs []string) {
	t.Helper()
	for _, c := range clusters {
		if _, err := netlink.LinkByName(c.device); err == nil {
			t.Errorf("device %s left behind", c.device)
		}
		if _, err := os.Stat(filepath.Join("/var/run/wireguard", c.device+".sock")); err == nil {
			t.Errorf("UAPI socket of %s left behind", c.device)
		}
		if st := c.wg.Status(); st.Enabled {
			t.Errorf("%s still reports encryption on", c.name)
		}
	}
	if got := wgRoutes(t, podCIDRs...); len(got) != 0 {
		t.Errorf("routes left behind: %v", got)
	}
}

// attachWireGuard wraps an agent's local source in a WireGuard agent for
// node-1 of its cluster and hands it the remote nodes (the tests' hook).
func attachWireGuard(cfg *agentsync.Config, dev wireguard.Config, keysDir string) (*wireguard.Agent, error) {
	dev.Logger = cfg.Logger
	a, err := wireguard.NewAgent(wireguard.AgentConfig{Device: dev, NodeName: "node-1", Source: cfg.LocalSource,
		NodeKeysDir: keysDir, RetryInterval: 100 * time.Millisecond, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	cfg.LocalSource, cfg.OnRemoteNodes = a, a.SetRemoteNodes
	return a, nil
}
