package node

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/socklb"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/k8spolicy"
	"github.com/clustermesh/clustermesh/observe"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
	"github.com/clustermesh/clustermesh/wireguard"
)

// Defaults of NewConfig beside the packages' own.
const (
	// defaultMetricsAddr: metrics are served without authentication, to
	// localhost only unless the operator says otherwise.
	defaultMetricsAddr = "127.0.0.1:9962"
	// defaultWireGuardKeyFile is where the agent keeps its WireGuard
	// private key.
	defaultWireGuardKeyFile = "/var/lib/clustermesh/wireguard.key"
)

// ErrInvalidConfig is wrapped by every Config.Validate error.
var ErrInvalidConfig = errors.New("invalid node config")

// Config of a node agent. Start from NewConfig, which holds every default
// (RegisterFlags shows them as the flags' defaults); a field is the value
// of the agent flag named in its comment.
type Config struct {
	// Sync configures the sync agent: the local cluster's name and id
	// (--cluster-name, --cluster-id, --max-connected-clusters), the
	// directory of remote configs (--config-dir), timings and limits. Its
	// LocalSource, Datapath, Identities, OnRemoteNodes, RecheckFlows,
	// NodeName and Logger are the node's to set: what they hold is ignored.
	Sync agentsync.Config
	// StateFile is the local cluster's state file (--state-file), read
	// unless Source is set.
	StateFile string
	// Source, when set, is the local state source instead of StateFile:
	// the Kubernetes source (--state-source=kubernetes), or a file source
	// with settings of its own.
	Source statesource.Source
	// NodeName is this node's name in the local state (--node-name):
	// WireGuard takes its IP and pod CIDRs from there, policy the
	// endpoints to enforce. Both need it.
	NodeName string
	// Maps says where the eBPF maps are pinned (--bpf-pin-dir) and how
	// large the mesh maps are (--max-ipcache-entries, ...:
	// datapath.SizeOptions). The maps of the socket load balancer and of
	// the policy programs are pinned there too, sized by SocketLBMaps and
	// Policy.Maps.
	Maps datapath.Config
	// InMemory runs the agent on the in-memory datapath: nothing reaches
	// the kernel (tests, the demo without eBPF). Without it, an agent that
	// lacks the privileges for eBPF falls back to it and says so.
	InMemory bool
	// SocketLB attaches the socket load balancer to Cgroup (--socket-lb,
	// --cgroup; the cgroup v2 root when empty), so that global services
	// answer on their ClusterIP. Only on the eBPF datapath.
	SocketLB bool
	Cgroup   string
	// SocketLBMaps sizes the socket load balancer's own maps
	// (--max-sock-revnat-entries: socklb.SizeOptions).
	SocketLBMaps socklb.Config
	// WireGuard encrypts pod traffic to the other clusters' nodes.
	WireGuard WireGuardConfig
	// Policy enforces network policy on this node's endpoints, and reports
	// their flows.
	Policy PolicyConfig
	// Hubble observes the node's endpoints and serves their flows with
	// Hubble's Observer API.
	Hubble HubbleConfig
	// L7 is the transparent proxy of the ports whose policy has HTTP or
	// DNS rules, and the FQDN cache of toFQDNs rules.
	L7 L7Config
	// StatusAddr is the unix socket path or host:port the status is served
	// on (--status-addr); empty: not served.
	StatusAddr string
	// MetricsAddr is the host:port of /metrics (--metrics-addr), served
	// without authentication; empty: not served.
	MetricsAddr string
	Logger      *slog.Logger
}

// WireGuardConfig is the WireGuard side of a node (package wireguard).
type WireGuardConfig struct {
	// Enable opens the device at the first local state (--enable-wireguard):
	// every remote node with a published key becomes a peer, its pod CIDRs
	// routed through the device. The device is removed when Run returns.
	Enable bool
	// Device is the device's name, port, private key file, underlay MTU,
	// implementation and node encryption (--wireguard-device, ...). Its
	// NodeIP and LocalPodCIDRs come from NodeName's entry in the state.
	Device wireguard.Config
	// KeysDir receives this node's public key as <NodeName>.pub for the
	// cluster's apiserver (--node-keys-dir); empty: the key is only logged.
	KeysDir string
	// RotateAtStart rotates the key once the device is open
	// (--rotate-wireguard-key).
	RotateAtStart bool
}

// PolicyConfig is the policy side of a node (package enforcer) and its
// flows (package observe).
type PolicyConfig struct {
	// Dir holds the policies (--policy-dir): CiliumNetworkPolicy and
	// NetworkPolicy files, read again on change, the last valid set kept.
	// With Dir or Kubernetes the node enforces policy on NodeName's
	// endpoints.
	Dir string
	// DefaultLocalCluster: a peer selector without the cluster label
	// selects only the local cluster's pods (--policy-default-local-cluster,
	// true in NewConfig); false: matching pods of every cluster.
	DefaultLocalCluster bool
	// FlowSampleRate reports one in this many forwarded packets as a flow
	// (--flow-sample-rate); 0: none. Drops are always reported.
	FlowSampleRate uint32
	// FlowTraceNew reports the first packet of every new connection
	// (--flow-trace-new, true in NewConfig).
	FlowTraceNew bool
	// AuditNamespaces lists the namespaces whose endpoints are in audit
	// mode, comma-separated, "*" for all (--policy-audit-namespaces;
	// enforcer.ParseAuditNamespaces): what their policy denies passes,
	// reported AUDIT. Empty: none.
	AuditNamespaces string
	// ReloadInterval is how often Dir is read again (default
	// enforcer.DefaultReloadInterval).
	ReloadInterval time.Duration
	// InNetns, when set, runs fn in the network namespace of the endpoints'
	// host-side interfaces (the demo's node namespace); nil: the agent's.
	InNetns func(fn func() error) error
	// Kubernetes, when set, returns the watcher of the cluster's
	// NetworkPolicy and CiliumNetworkPolicy objects, which hands them to
	// enf (--policy-from-kubernetes). The policy map is written only once
	// the watcher has synced.
	Kubernetes func(enf *enforcer.Enforcer) (*k8spolicy.Watcher, error)
	// Maps sizes the policy programs' maps, pinned beside the others
	// (--max-policy-entries, ..., --flow-ring-bytes: tcpolicy.SizeOptions).
	Maps tcpolicy.Config
}

// enabled: the node enforces policy.
func (p *PolicyConfig) enabled() bool { return p.Dir != "" || p.Kubernetes != nil }

// NewConfig returns the config of a node agent with every default: the
// agent's flags' defaults. The cluster, the config directory and the state
// remain to be set.
func NewConfig() Config {
	c := Config{
		Sync: agentsync.Config{
			MaxConnectedClusters: wire.DefaultMaxConnectedClusters,
			HeartbeatTimeout:     agentsync.DefaultHeartbeatTimeout,
			ProbeInterval:        agentsync.DefaultProbeInterval,
			ProbeTimeout:         agentsync.DefaultProbeTimeout,
			SyncTimeout:          agentsync.DefaultSyncTimeout,
			BackoffMax:           agentsync.DefaultBackoffMax,
			ListPageBytes:        agentsync.DefaultListPageBytes,
			RemoteLimits: agentsync.Limits{
				Nodes: agentsync.DefaultMaxRemoteNodes, Identities: agentsync.DefaultMaxRemoteIdentities,
				IPCache: agentsync.DefaultMaxRemoteIPCache, Services: agentsync.DefaultMaxRemoteServices,
				Bytes: agentsync.DefaultMaxRemoteBytes,
			},
		},
		Maps:     datapath.Config{PinDir: datapath.DefaultPinDir},
		SocketLB: true,
		WireGuard: WireGuardConfig{Device: wireguard.Config{
			DeviceName: wireguard.DefaultDeviceName, ListenPort: wireguard.DefaultListenPort,
			PrivateKeyFile: defaultWireGuardKeyFile, Implementation: wireguard.ImplAuto,
		}},
		Policy:      PolicyConfig{DefaultLocalCluster: true, FlowTraceNew: true},
		Hubble:      HubbleConfig{Enable: true, SocketPath: DefaultHubbleSocketPath, EventBufferCapacity: observe.DefaultCapacity},
		L7:          newL7Config(),
		StatusAddr:  DefaultStatusAddr,
		MetricsAddr: defaultMetricsAddr,
	}
	sizeDefaults(&c.Maps, datapath.SizeOptions())
	sizeDefaults(&c.SocketLBMaps, socklb.SizeOptions())
	sizeDefaults(&c.Policy.Maps, tcpolicy.SizeOptions())
	return c
}

// sizeDefaults sets each size of c that opts describe to its default.
func sizeDefaults[C any](c *C, opts []datapath.SizeOption[C]) {
	for _, o := range opts {
		*o.Of(c) = o.Default
	}
}

// Validate checks what the node adds to the sync agent's config (New
// checks the rest when it builds the sync agent).
func (c *Config) Validate() error {
	max := c.Sync.MaxConnectedClusters
	if max == 0 {
		max = wire.DefaultMaxConnectedClusters
	}
	local := wire.Cluster{Name: c.Sync.ClusterName, ID: c.Sync.ClusterID, MaxConnectedClusters: max}
	if err := local.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	var err error
	switch {
	case c.Sync.ConfigDir == "":
		err = errors.New("no directory of remote configs (--config-dir)")
	case c.Source == nil && c.StateFile == "":
		err = errors.New("no local state: a state file (--state-file) or a source")
	case c.WireGuard.Enable && c.NodeName == "":
		err = errors.New("--enable-wireguard needs --node-name: this node's name in the state file (its IP and pod CIDRs come from there)")
	case c.Policy.Dir != "" && c.NodeName == "":
		err = errors.New("--policy-dir needs --node-name: the node's name in the local state, whose endpoints this agent enforces")
	case c.Policy.Kubernetes != nil && c.NodeName == "":
		err = errors.New("the cluster's policies need --node-name: the node's name, whose endpoints this agent enforces")
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if c.WireGuard.Enable {
		if err := c.WireGuard.Device.Validate(); err != nil {
			return fmt.Errorf("%w: WireGuard: %w", ErrInvalidConfig, err)
		}
	}
	if err := c.Hubble.validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if !c.InMemory {
		if err := errors.Join(c.Maps.Validate(), c.SocketLBMaps.Validate(), c.Policy.Maps.Validate()); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	return nil
}
