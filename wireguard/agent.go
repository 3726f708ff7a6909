package wireguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// DefaultAgentRetryInterval is how often an Agent retries a failed peer
// configuration or key publication, and checks its published key.
const DefaultAgentRetryInterval = 5 * time.Second

// AgentConfig configures the WireGuard side of a node agent.
type AgentConfig struct {
	// Device configures the device. LocalPodCIDRs is ignored: the local pod
	// CIDRs are NodeName's in the local state, kept up to date. NodeIP,
	// when unset, is NodeName's first IP in the local state.
	Device Config
	// NodeName is this node's name in the local state. Required.
	NodeName string
	// Source delivers the local cluster's state. Required.
	Source statesource.Source
	// NodeKeysDir, when set, receives this node's public key as
	// <NodeName>.pub (statesource.WriteNodeKey) once the device is open and
	// after every rotation; the cluster's apiserver reads the directory
	// (statesource.File.NodeKeysDir) and publishes the key in the node's
	// entry. When empty, the key is only logged: put it in the state file
	// as the node's wireguardPubKey.
	NodeKeysDir string
	// RotateAtStart rotates the key once the device is open, before the key
	// is published.
	RotateAtStart bool
	// RetryInterval: how often a failed peer configuration or key
	// publication is retried and the published key file checked (default
	// DefaultAgentRetryInterval).
	RetryInterval time.Duration
	Logger        *slog.Logger
}

// Agent is the WireGuard side of a node agent. It is a statesource.Source
// that wraps the agent's local source: at the first local state it finds
// NodeName there, opens the device with the node's IP and pod CIDRs and
// publishes the public key; it then keeps the local pod CIDRs in sync with
// the state, and passes every state on. SetRemoteNodes (agentsync's
// OnRemoteNodes) makes the device's peers the remote nodes. The device is
// closed when Run returns. Methods are safe for concurrent use.
//
//	wg, _ := wireguard.NewAgent(wireguard.AgentConfig{Source: file, NodeName: "node-1", ...})
//	cfg.LocalSource, cfg.OnRemoteNodes = wg, wg.SetRemoteNodes   // agentsync.Config
type Agent struct {
	// Set by NewAgent, read-only afterwards.
	cfg    AgentConfig
	log    *slog.Logger
	device string // the device's name
	port   int
	ready  chan struct{} // closed once the device is open

	running atomic.Bool
	dev     atomic.Pointer[Device] // stored once, with mu held

	// mu serializes every operation on the device and guards the fields
	// below it.
	mu         sync.Mutex
	nodes      []*wire.Node
	peersErr   error // the last SetPeers or SetLocalPodCIDRs failed
	localCIDRs []netip.Prefix
	stateIP    netip.Addr // the node's first IP when the device opened
	published  string     // the key last written to NodeKeysDir
	publishErr error
	logged     string // the last warning about the local state
	closed     bool
}

// NewAgent checks cfg; the device opens in Run.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("WireGuard needs the node's name (the name of this node in the local state)")
	}
	if cfg.Source == nil {
		return nil, errors.New("WireGuard needs a local state source")
	}
	if err := cfg.Device.Validate(); err != nil {
		return nil, err
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = DefaultAgentRetryInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Device.Logger == nil {
		cfg.Device.Logger = cfg.Logger
	}
	dc := cfg.Device.withDefaults()
	return &Agent{cfg: cfg, log: cfg.Logger.With("device", dc.DeviceName, "node", cfg.NodeName), device: dc.DeviceName,
		port: dc.ListenPort, ready: make(chan struct{})}, nil
}

// Ready is closed once the device is open and its key published.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Device is the open device, nil before the first local state and after
// Run returned.
func (a *Agent) Device() *Device {
	if d := a.dev.Load(); d != nil && !a.isClosed() {
		return d
	}
	return nil
}

func (a *Agent) isClosed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closed
}

// Run runs the wrapped source until ctx is done, passing every state on to
// onChange (which may be nil). At the first state it opens the device; if
// that fails (NodeName not in the state, the device name or port in use, a
// key directory that cannot be written) Run returns the error without
// passing the state on. When Run returns, the device is closed (its routes
// and rules removed); the key file and the published key stay.
func (a *Agent) Run(ctx context.Context, onChange func(*statesource.State)) error {
	if !a.running.CompareAndSwap(false, true) {
		return errors.New("Agent.Run called twice: create a new Agent")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var openErr error
	var wg sync.WaitGroup
	err := a.cfg.Source.Run(ctx, func(st *statesource.State) {
		if openErr != nil {
			return
		}
		if a.dev.Load() == nil {
			if openErr = a.open(st); openErr != nil {
				cancel()
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.maintain(ctx)
			}()
		} else {
			a.localChanged(st)
		}
		if onChange != nil {
			onChange(st)
		}
	})
	cancel()
	wg.Wait()
	a.close()
	if openErr != nil {
		return openErr
	}
	return err
}

func findNode(st *statesource.State, name string) *statesource.Node {
	for i := range st.Nodes {
		if st.Nodes[i].Name == name {
			return &st.Nodes[i]
		}
	}
	return nil
}

// errNotInState says that NodeName is not in st, and which nodes are.
func (a *Agent) errNotInState(st *statesource.State) error {
	names := make([]string, 0, 5)
	for i := range st.Nodes {
		if i == 5 {
			names = append(names, "…")
			break
		}
		names = append(names, st.Nodes[i].Name)
	}
	return fmt.Errorf("node %q is not in the local state (its nodes: %s): the node name must be this node's name in the state",
		a.cfg.NodeName, strings.Join(names, ", "))
}

// open opens the device for the node's entry in st, rotates the key if
// asked, and publishes it.
func (a *Agent) open(st *statesource.State) error {
	n := findNode(st, a.cfg.NodeName)
	if n == nil {
		return fmt.Errorf("opening WireGuard device %s: %w", a.device, a.errNotInState(st))
	}
	cfg := a.cfg.Device
	var stateIP netip.Addr
	if len(n.IPs) > 0 {
		stateIP = n.IPs[0].Unmap()
	}
	if !cfg.NodeIP.IsValid() {
		cfg.NodeIP = stateIP
	}
	cfg.LocalPodCIDRs = slices.Clone(n.PodCIDRs)
	dev, err := Open(cfg)
	if err != nil {
		return err
	}
	if a.cfg.RotateAtStart {
		if _, err := dev.RotateKey(); err != nil {
			dev.Close()
			return err
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.publishLocked(dev.PublicKey()); err != nil {
		dev.Close()
		return fmt.Errorf("publishing the WireGuard public key: %w", err)
	}
	a.localCIDRs, a.stateIP = slices.Clone(n.PodCIDRs), stateIP
	a.dev.Store(dev)
	if len(a.nodes) > 0 {
		a.setPeersLocked(dev)
	}
	close(a.ready)
	return nil
}

// publishLocked writes key to NodeKeysDir (or, without one, logs what to
// put in the state file).
func (a *Agent) publishLocked(key string) error {
	if a.cfg.NodeKeysDir == "" {
		if a.published != key {
			a.log.Warn("no node keys directory: put this node's WireGuard public key in the state file (wireguardPubKey of the node)", "publicKey", key)
			a.published = key
		}
		return nil
	}
	if err := statesource.WriteNodeKey(a.cfg.NodeKeysDir, a.cfg.NodeName, key); err != nil {
		a.publishErr = err
		return err
	}
	a.publishErr = nil
	if a.published != key {
		a.log.Info("published the WireGuard public key", "publicKey", key, "file", statesource.NodeKeyFile(a.cfg.NodeName), "dir", a.cfg.NodeKeysDir)
	}
	a.published = key
	return nil
}

// SetRemoteNodes makes the device's peers exactly nodes (every remote
// cluster's nodes, as agentsync's OnRemoteNodes delivers them). Rejected
// peers are logged by the device (once per reason) and shown in Status; a
// failure to configure the device is retried every RetryInterval. Before
// the device is open the nodes are kept for it.
func (a *Agent) SetRemoteNodes(nodes []*wire.Node) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nodes = nodes
	if dev := a.dev.Load(); dev != nil && !a.closed {
		a.setPeersLocked(dev)
	}
}

func (a *Agent) setPeersLocked(dev *Device) {
	peers := make([]Peer, 0, len(a.nodes))
	for _, n := range a.nodes {
		peers = append(peers, PeerFromNode(n, a.port))
	}
	_, err := dev.SetPeers(peers)
	a.notePeersErr(err)
}

func (a *Agent) notePeersErr(err error) {
	if err != nil && a.peersErr == nil {
		a.log.Error("configuring WireGuard peers failed; retrying", "every", a.cfg.RetryInterval, "err", err)
	} else if err == nil && a.peersErr != nil {
		a.log.Info("WireGuard peers configured after a failure")
	}
	a.peersErr = err
}

// localChanged follows the node's pod CIDRs in a new local state.
func (a *Agent) localChanged(st *statesource.State) {
	a.mu.Lock()
	defer a.mu.Unlock()
	dev := a.dev.Load()
	if dev == nil || a.closed {
		return
	}
	n := findNode(st, a.cfg.NodeName)
	if n == nil {
		a.warnOnce("this node is no longer in the local state: keeping its pod CIDRs and peers")
		return
	}
	if len(n.IPs) > 0 && n.IPs[0].Unmap() != a.stateIP && !a.cfg.Device.NodeIP.IsValid() {
		a.warnOnce(fmt.Sprintf("this node's IP changed in the local state from %s to %s: restart the agent to use it", a.stateIP, n.IPs[0]))
	} else {
		a.logged = ""
	}
	if slices.Equal(n.PodCIDRs, a.localCIDRs) {
		return
	}
	a.log.Info("local pod CIDRs changed", "from", a.localCIDRs, "to", n.PodCIDRs)
	a.localCIDRs = slices.Clone(n.PodCIDRs)
	_, err := dev.SetLocalPodCIDRs(a.localCIDRs)
	a.notePeersErr(err)
}

func (a *Agent) warnOnce(msg string) {
	if a.logged != msg {
		a.log.Warn(msg)
		a.logged = msg
	}
}

// maintain retries what failed and rewrites the published key file if it
// no longer holds the key (removed or overwritten by someone else).
func (a *Agent) maintain(ctx context.Context) {
	t := time.NewTicker(a.cfg.RetryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		dev := a.dev.Load()
		if a.closed || dev == nil {
			a.mu.Unlock()
			return
		}
		if a.peersErr != nil {
			a.setPeersLocked(dev)
		}
		if a.cfg.NodeKeysDir != "" {
			key := dev.PublicKey()
			if got, err := statesource.ReadNodeKey(a.cfg.NodeKeysDir, a.cfg.NodeName); err != nil || got != key {
				if a.publishErr == nil {
					a.log.Warn("the published key file is missing or holds another key: rewriting it", "dir", a.cfg.NodeKeysDir, "err", err)
				}
				if err := a.publishLocked(key); err != nil {
					a.log.Error("publishing the WireGuard public key failed; retrying", "every", a.cfg.RetryInterval, "err", err)
				}
			}
		}
		a.mu.Unlock()
	}
}

// RotateKey gives the device a new key and publishes it; the remote nodes
// pick it up through sync. It returns the new public key. A failure to
// publish (after the rotation itself succeeded) is returned along with the
// key and retried every RetryInterval.
func (a *Agent) RotateKey() (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	dev := a.dev.Load()
	if dev == nil || a.closed {
		return "", errors.New("rotating the WireGuard key: the device is not open")
	}
	pub, err := dev.RotateKey()
	if err != nil {
		return "", err
	}
	if err := a.publishLocked(pub); err != nil {
		return pub, fmt.Errorf("publishing the rotated WireGuard key (the device uses it already; retried every %s): %w", a.cfg.RetryInterval, err)
	}
	return pub, nil
}

// PublicKey is the device's public key ("" before it is open).
func (a *Agent) PublicKey() string { return a.dev.Load().PublicKey() }

// Status is the device's status; before the device is open it says so in
// LastError, and a failure to publish the key is reported there too.
func (a *Agent) Status() Status {
	dev := a.dev.Load()
	if dev == nil {
		dc := a.cfg.Device.withDefaults()
		return Status{Device: dc.DeviceName, ListenPort: dc.ListenPort, NodeEncryption: dc.NodeEncryption,
			LastError: "not open yet: waiting for the local state"}
	}
	s := dev.Status()
	a.mu.Lock()
	if a.publishErr != nil {
		s.LastError = strings.TrimPrefix(s.LastError+"; ", "; ") + "publishing the public key: " + a.publishErr.Error()
	}
	a.mu.Unlock()
	return s
}

func (a *Agent) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	a.closed = true
	if dev := a.dev.Load(); dev != nil {
		if err := dev.Close(); err != nil {
			a.log.Error("closing the WireGuard device", "err", err)
		}
	}
}
