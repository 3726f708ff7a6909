package wireguard

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// chanSource delivers the states sent on it.
type chanSource chan *statesource.State

func (c chanSource) Run(ctx context.Context, onChange func(*statesource.State)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case st := <-c:
			onChange(st)
		}
	}
}

func localState(podCIDR string) *statesource.State {
	return &statesource.State{Nodes: []statesource.Node{
		{Name: "n0", IPs: []netip.Addr{netip.MustParseAddr("192.168.77.9")}},
		{Name: "n1", IPs: []netip.Addr{netip.MustParseAddr("192.168.77.1")}, PodCIDRs: []netip.Prefix{pfx(podCIDR)}},
	}}
}

func remoteNode(name, key, ip, podCIDR string) *wire.Node {
	return &wire.Node{Name: name, Cluster: "west", WireguardPubKey: key,
		IPAddresses:   []wire.NodeAddress{{Type: wire.InternalIP, IP: netip.MustParseAddr(ip)}},
		IPv4AllocCIDR: &wire.CIDR{Prefix: pfx(podCIDR)}}
}

// agentFixture is an Agent for node n1 whose device lives in a namespace
// of its own, fed by a channel source.
type agentFixture struct {
	ns      *testNS
	name    string // the device's
	keysDir string
	src     chanSource
	a       *Agent
}

func newAgentFixture(t *testing.T) *agentFixture {
	f := &agentFixture{ns: newNS(t), name: uniqueDevName(), keysDir: filepath.Join(t.TempDir(), "keys"), src: make(chanSource, 1)}
	a, err := NewAgent(AgentConfig{
		Device: Config{DeviceName: f.name, PrivateKeyFile: filepath.Join(t.TempDir(), "wg.key"), NetNS: f.ns.path,
			UnderlayMTU: 1500, Logger: testLogger(t, "n1")},
		NodeName: "n1", Source: f.src, NodeKeysDir: f.keysDir, RetryInterval: 20 * time.Millisecond, Logger: testLogger(t, "n1"),
	})
	if err != nil {
		t.Fatal(err)
	}
	f.a = a
	return f
}

// start runs the agent until the test ends (or stop is called), passing
// states on to the returned channel, and waits for its device to open at the
// first local state.
func (f *agentFixture) start(t *testing.T) (passed chan *statesource.State, stop func() error) {
	passed = make(chan *statesource.State, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.a.Run(ctx, func(st *statesource.State) { passed <- st }) }()
	var err error
	stopped := false
	stop = func() error {
		if !stopped {
			cancel()
			err, stopped = <-done, true
		}
		return err
	}
	t.Cleanup(func() { stop() })
	f.src <- localState("10.201.1.0/24")
	select {
	case <-f.a.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the device did not open")
	}
	return passed, stop
}

// TestAgentUnknownNode: a node name missing from the state fails Run at the
// first state; the state is not passed on, and nothing is opened.
func TestAgentUnknownNode(t *testing.T) {
	testenv.RequireRoot(t)
	f := newAgentFixture(t)
	f.src <- &statesource.State{Nodes: []statesource.Node{{Name: "other", IPs: []netip.Addr{netip.MustParseAddr("192.168.77.3")}}}}
	err := f.a.Run(context.Background(), func(*statesource.State) { t.Error("a state was passed on") })
	if err == nil || !strings.HasPrefix(err.Error(), "opening WireGuard device "+f.name+`: node "n1" is not in the local state`) ||
		!strings.Contains(err.Error(), "other") {
		t.Fatalf("Run with an unknown node: %v", err)
	}
	assertGone(t, f.ns, f.name)
}

// TestAgent: the agent side of WireGuard. The device opens at the first
// local state with the node's IP and pod CIDRs and its key is published in
// the node keys directory; remote nodes become peers; a change of the local
// pod CIDRs is followed (a remote that overlapped them is accepted once they
// moved); a rotation publishes the new key; a removed key file is
// rewritten; the device is gone when Run returns.
func TestAgent(t *testing.T) {
	testenv.RequireRoot(t)
	f := newAgentFixture(t)
	a := f.a
	if st := a.Status(); st.Enabled || !strings.Contains(st.LastError, "not open yet") {
		t.Errorf("status before the first state: %+v", st)
	}
	passed, stop := f.start(t)
	if st := <-passed; findNode(st, "n1") == nil {
		t.Fatal("the first state was not passed on")
	}
	pub := a.PublicKey()
	if got, err := statesource.ReadNodeKey(f.keysDir, "n1"); err != nil || got != pub {
		t.Fatalf("published key %q (%v), device key %q", got, err, pub)
	}

	k1, k2 := newKey(t), newKey(t)
	a.SetRemoteNodes([]*wire.Node{
		remoteNode("w1", k1, "192.168.77.2", "10.202.1.0/24"),
		remoteNode("w2", k2, "192.168.77.3", "10.201.1.128/25"), // inside the local pod CIDR
	})
	st := a.Status()
	if !st.Enabled || st.Peers != 1 || len(st.Rejected) != 1 || st.Rejected[0].Node != "w2" || !strings.Contains(st.Rejected[0].Reason, "local pod CIDR") {
		t.Fatalf("after SetRemoteNodes: %d peers, rejected %+v", st.Peers, st.Rejected)
	}
	if routes := ourRoutes(t, f.ns); len(routes) != 1 || !strings.HasPrefix(routes[0], "10.202.1.0/24") {
		t.Errorf("routes: %v", routes)
	}

	// The local pod CIDR moves away: w2 is accepted.
	f.src <- localState("10.201.2.0/24")
	<-passed
	if st := a.Status(); st.Peers != 2 || len(st.Rejected) != 0 {
		t.Fatalf("after the local pod CIDR moved: %d peers, rejected %+v", st.Peers, st.Rejected)
	}

	newPub := checkAgentRotation(t, f, pub)

	// Remote nodes all gone: no peer, no route.
	a.SetRemoteNodes(nil)
	if st := a.Status(); st.Peers != 0 || len(ourRoutes(t, f.ns)) != 0 {
		t.Errorf("after the remotes left: %d peers, routes %v", st.Peers, ourRoutes(t, f.ns))
	}
	a.SetRemoteNodes([]*wire.Node{remoteNode("w1", k1, "192.168.77.2", "10.202.1.0/24")})

	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	assertGone(t, f.ns, f.name)
	if a.Device() != nil {
		t.Error("Device() after Run returned")
	}
	if _, err := a.RotateKey(); err == nil {
		t.Error("RotateKey after Run returned")
	}
	if got, _ := statesource.ReadNodeKey(f.keysDir, "n1"); got != newPub {
		t.Errorf("the published key should stay after the agent stops (a restart keeps the key): %q", got)
	}
}

// checkAgentRotation rotates the running agent's key (pub before) and checks
// that the new key is published, and published again when someone removes
// the key file. It returns the new key.
func checkAgentRotation(t *testing.T, f *agentFixture, pub string) string {
	t.Helper()
	newPub, err := f.a.RotateKey()
	if err != nil || newPub == pub || f.a.PublicKey() != newPub {
		t.Fatalf("RotateKey: %q %v (old %q)", newPub, err, pub)
	}
	if got, _ := statesource.ReadNodeKey(f.keysDir, "n1"); got != newPub {
		t.Errorf("published key after the rotation: %q, want %q", got, newPub)
	}
	if err := os.Remove(filepath.Join(f.keysDir, "n1.pub")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "the key file rewritten", func() bool {
		got, _ := statesource.ReadNodeKey(f.keysDir, "n1")
		return got == newPub
	})
	return newPub
}

func TestNewAgentValidates(t *testing.T) {
	src := make(chanSource)
	for _, tc := range []struct {
		cfg  AgentConfig
		want string
	}{
		{AgentConfig{Source: src, Device: Config{PrivateKeyFile: "k"}}, "node's name"},
		{AgentConfig{NodeName: "n", Device: Config{PrivateKeyFile: "k"}}, "source"},
		{AgentConfig{NodeName: "n", Source: src}, "private key file"},
		{AgentConfig{NodeName: "n", Source: src, Device: Config{PrivateKeyFile: "k", DeviceName: "much-too-long-name"}}, "longer than 15"},
	} {
		if _, err := NewAgent(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewAgent(%+v): %v, want an error about %q", tc.cfg, err, tc.want)
		}
	}
}
