package node

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/socklb"
	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
)

// RegisterFlags registers the agent's flags on fs, bound to c: each flag's
// default is c's value (NewConfig's defaults). The flags of the local
// state's other sources, of --cleanup and of the Kubernetes report are the
// command's.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	c.registerSyncFlags(fs)
	fs.StringVar(&c.StateFile, "state-file", c.StateFile, "the local cluster's state file (its global services and endpoints)")
	fs.StringVar(&c.NodeName, "node-name", c.NodeName, "this node's name in the local state: WireGuard takes its IP and pod CIDRs from there, policy the endpoints to enforce")
	fs.StringVar(&c.Maps.PinDir, "bpf-pin-dir", c.Maps.PinDir, "bpffs directory the eBPF maps are pinned in")
	registerSizes(fs, &c.Maps, datapath.SizeOptions())
	registerSizes(fs, &c.SocketLBMaps, socklb.SizeOptions())
	registerSizes(fs, &c.Policy.Maps, tcpolicy.SizeOptions())
	fs.BoolVar(&c.SocketLB, "socket-lb", c.SocketLB, "attach the eBPF socket load balancer (connect/sendmsg/recvmsg/getpeername) so that global services answer on their ClusterIP")
	fs.StringVar(&c.Cgroup, "cgroup", c.Cgroup, "cgroup v2 directory to attach the socket load balancer to (default: the cgroup v2 root)")
	fs.StringVar(&c.StatusAddr, "status-addr", c.StatusAddr, "unix socket path or host:port to serve status on")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "host:port to serve Prometheus /metrics on, without authentication: localhost only by default; \":PORT\" exposes them to every interface (\"\" disables)")
	c.WireGuard.registerFlags(fs)
	c.Policy.registerFlags(fs)
	c.Hubble.registerFlags(fs)
	c.L7.registerFlags(fs)
}

// registerSizes registers a flag for each size of c that opts describe.
func registerSizes[C any](fs *pflag.FlagSet, c *C, opts []datapath.SizeOption[C]) {
	for _, o := range opts {
		fs.Uint32Var(o.Of(c), o.Flag, *o.Of(c), o.Usage)
	}
}

func (c *Config) registerSyncFlags(fs *pflag.FlagSet) {
	s := &c.Sync
	fs.StringVar(&s.ClusterName, "cluster-name", s.ClusterName, "name of the local cluster")
	fs.Uint32Var(&s.ClusterID, "cluster-id", s.ClusterID, "id of the local cluster")
	fs.Uint32Var(&s.MaxConnectedClusters, "max-connected-clusters", s.MaxConnectedClusters, "mesh size: 255 or 511 (the same on every cluster)")
	fs.StringVar(&s.ConfigDir, "config-dir", s.ConfigDir, "directory with one etcd client config per remote cluster")
	fs.DurationVar(&s.HeartbeatTimeout, "heartbeat-timeout", s.HeartbeatTimeout, "a remote whose heartbeat is older is reported stale")
	fs.DurationVar(&s.RemoteStateTTL, "remote-state-ttl", s.RemoteStateTTL, "revoke the service backends (only) of a remote unreachable for longer than this; 0 keeps them forever")
	fs.DurationVar(&s.ProbeInterval, "probe-interval", s.ProbeInterval, "how often each remote's heartbeat is read")
	fs.DurationVar(&s.ProbeTimeout, "probe-timeout", s.ProbeTimeout, "a remote that does not answer within this is disconnected (its state is kept)")
	fs.DurationVar(&s.SyncTimeout, "sync-timeout", s.SyncTimeout, "after a restart, how long policy enforcement waits for the remotes' first sync; the entries a previous run left for a remote stay until that remote has fully synced, however long it takes")
	fs.IntVar(&s.RemoteLimits.Nodes, "max-remote-nodes", s.RemoteLimits.Nodes, "most nodes held from one remote cluster; new ones beyond are refused (counted, shown in status)")
	fs.IntVar(&s.RemoteLimits.Identities, "max-remote-identities", s.RemoteLimits.Identities, "most identities held from one remote cluster")
	fs.IntVar(&s.RemoteLimits.IPCache, "max-remote-ipcache-entries", s.RemoteLimits.IPCache, "most ipcache entries (endpoints) held from one remote cluster, so that no peer crowds the others out of the ipcache map")
	fs.IntVar(&s.RemoteLimits.Services, "max-remote-services", s.RemoteLimits.Services, "most global services held from one remote cluster")
	fs.Int64Var(&s.RemoteLimits.Bytes, "max-remote-bytes", s.RemoteLimits.Bytes, "most bytes of node, identity and service values held from one remote cluster")
	fs.Int64Var(&s.ListPageBytes, "list-page-bytes", s.ListPageBytes, "largest list page read from a remote, in bytes (pages are also at most 2,000 entries)")
	fs.BoolVar(&s.TrustRemoteAddresses, "trust-remote-addresses", s.TrustRemoteAddresses, "accept a remote's endpoints and backends outside its nodes' pod CIDRs and addresses (only for peers whose IPAM gives pods addresses outside any per-node CIDR, such as cloud ENI modes); then an address two clusters claim goes to the lower cluster id")
	fs.DurationVar(&s.BackoffMax, "backoff-max", s.BackoffMax, "longest wait between reconnect attempts")
}

// wireGuardOnly are the flags that mean nothing without --enable-wireguard.
var wireGuardOnly = []string{"wireguard-device", "wireguard-port", "wireguard-key-file", "node-encryption",
	"rotate-wireguard-key", "node-keys-dir", "wireguard-underlay-mtu", "wireguard-implementation"}

func (w *WireGuardConfig) registerFlags(fs *pflag.FlagSet) {
	d := &w.Device
	fs.BoolVar(&w.Enable, "enable-wireguard", w.Enable, "encrypt pod traffic to the other clusters' nodes with WireGuard (needs --node-name; see docs/wireguard.md)")
	fs.StringVar(&d.DeviceName, "wireguard-device", d.DeviceName, "name of the WireGuard interface (unique on the machine)")
	fs.IntVar(&d.ListenPort, "wireguard-port", d.ListenPort, "UDP port of the WireGuard device; the same on every node of the mesh (a remote node's endpoint is its IP and this port)")
	fs.StringVar(&d.PrivateKeyFile, "wireguard-key-file", d.PrivateKeyFile, "the WireGuard private key (mode 0600, created on first start)")
	fs.BoolVar(&d.NodeEncryption, "node-encryption", d.NodeEncryption, "also encrypt traffic between node IPs (not only pod CIDRs)")
	fs.BoolVar(&w.RotateAtStart, "rotate-wireguard-key", w.RotateAtStart, "rotate the WireGuard key at start (SIGUSR1 rotates it while running)")
	fs.StringVar(&w.KeysDir, "node-keys-dir", w.KeysDir, "directory to publish this node's WireGuard public key in, as <node-name>.pub, for the cluster's apiserver (its --node-keys-dir); empty: only log the key, to be put in the state file")
	fs.IntVar(&d.UnderlayMTU, "wireguard-underlay-mtu", d.UnderlayMTU, "MTU of the underlay (0: that of the interface holding the node's IP); the device's is 60 (IPv6: 80) less")
	fs.StringVar(&d.Implementation, "wireguard-implementation", d.Implementation, "auto (the kernel module if present, else userspace), kernel or userspace")
}

// policyOnly are the flags that mean nothing without a policy; observeOnly
// those that mean nothing without flows.
var (
	policyOnly  = []string{"policy-default-local-cluster", "policy-audit-namespaces"}
	observeOnly = []string{"flow-sample-rate", "flow-trace-new", "hubble-socket-path", "hubble-listen-address",
		"hubble-tls-cert-file", "hubble-tls-key-file", "hubble-tls-client-ca-files", "hubble-event-buffer-capacity",
		"hubble-metrics", "hubble-flowlogs-config-path"}
)

func (p *PolicyConfig) registerFlags(fs *pflag.FlagSet) {
	fs.StringVar(&p.Dir, "policy-dir", p.Dir, "enforce the policies in this directory (CiliumNetworkPolicy and NetworkPolicy YAML or JSON, read again on change; an invalid edit keeps the last valid set) on this node's endpoints (needs --node-name; see docs/policy.md)")
	fs.BoolVar(&p.DefaultLocalCluster, "policy-default-local-cluster", p.DefaultLocalCluster, "a peer selector without the io.cilium.k8s.policy.cluster label selects only the local cluster's pods; false: pods of every cluster")
	fs.StringVar(&p.AuditNamespaces, "policy-audit-namespaces", p.AuditNamespaces, "comma-separated namespaces whose endpoints are in policy audit mode (* for all): what their policy denies passes and is reported with verdict AUDIT (see docs/policy.md)")
	fs.Uint32Var(&p.FlowSampleRate, "flow-sample-rate", p.FlowSampleRate, "report one in this many forwarded packets as flows (drops are always reported); 0: none")
	fs.BoolVar(&p.FlowTraceNew, "flow-trace-new", p.FlowTraceNew, "report the first packet of every new connection as a flow")
}

// CheckFlags refuses flags of fs (registered by RegisterFlags) that mean
// nothing with the others: WireGuard's without --enable-wireguard, the
// policy's without a policy. Set c.Policy.Kubernetes before, when the
// cluster's policies are enforced.
func (c *Config) CheckFlags(fs *pflag.FlagSet) error {
	if !c.WireGuard.Enable {
		for _, name := range wireGuardOnly {
			if fs.Changed(name) {
				return fmt.Errorf("--%s needs --enable-wireguard", name)
			}
		}
	}
	if !c.Policy.enabled() {
		for _, name := range policyOnly {
			if fs.Changed(name) {
				return fmt.Errorf("--%s needs --policy-dir (or the cluster's policies: --state-source=kubernetes with --node-name)", name)
			}
		}
	}
	if !c.observing() {
		for _, name := range observeOnly {
			if fs.Changed(name) {
				return fmt.Errorf("--%s needs --enable-hubble and --node-name (the node whose endpoints are observed)", name)
			}
		}
	}
	return nil
}
