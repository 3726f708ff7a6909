package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/metricsserver"
	"github.com/clustermesh/clustermesh/k8ssource"
	"github.com/clustermesh/clustermesh/meshapiserver"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// apiserverFlags are the flags of `clustermesh apiserver` beside the
// meshapiserver.Config fields they set directly.
type apiserverFlags struct {
	cfg                                               meshapiserver.Config
	certDir, stateFile, stateDir, peers, metricsAddr  string
	nodeKeysDir, stateSource, kubeconfig, kubeContext string
	namespace, trustedCADir                           string
	etcdEndpoints                                     string
}

func newAPIServerCmd() *cobra.Command {
	var af apiserverFlags
	cmd := &cobra.Command{
		Use:   "apiserver --cluster-name NAME --cluster-id ID --cert-dir DIR --state-file FILE",
		Short: "Run a cluster's mesh apiserver (embedded etcd behind mutual TLS)",
		Long:  apiserverLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := af.config(cmd)
			if err != nil {
				return err
			}
			return runAPIServer(cmd.Context(), cfg, af.metricsAddr)
		},
	}
	af.register(cmd)
	return cmd
}

const apiserverLong = `Run the mesh apiserver of one cluster: an embedded etcd that accepts only
clients with a certificate from the mesh CA, publishes the cluster's nodes,
identities, ipcache entries and global services (read from --state-file and
re-read when it changes), and lets each --peer read them, read-only.

The etcd is ephemeral: its content is re-derived from the state on every start,
so it runs without fsync in a private directory (mode 0700) under
$TMPDIR/clustermesh-<uid>, removed on exit; what an apiserver killed with
SIGKILL leaves there is removed by the next start. Only identity numbers are
kept, so that they survive restarts: in --state-dir, or with
--state-source=kubernetes in the configmap clustermesh-identities of
--namespace (the role 'clustermesh enable' creates allows it).

etcd's only network listener is --listen (TLS, mesh client certificates,
gRPC only). Its peer listener and its HTTP endpoints are unix sockets in the
private directory. Only admin-<cluster> (and root) certificates of the mesh CA
can write, grant leases or change the store; every other user can only read.

With --trusted-ca-dir, client certificates of the CAs in that directory (one
PEM file each) are accepted besides the mesh CA's: peers with another CA,
connected with 'clustermesh connect --allow-mismatching-ca'. Whoever holds
such a CA's key can then connect as any user and read what that user reads;
only certificates of the mesh CA can write (SECURITY.md).

Prometheus metrics are served without authentication on --metrics-addr,
127.0.0.1:9963 by default; give another address (e.g. :9963) for a scraper on
another host.

--cert-dir is a bundle from 'clustermesh ca issue --cluster NAME'.

With --etcd-endpoints, no etcd is embedded: the apiserver publishes into that
external etcd cluster (TLS; by default it trusts the mesh CA and logs in with
the admin-<cluster> certificate, whose common name must be a user with the
root role there) and creates its users and roles there. Several replicas on
the same endpoints elect one leader (etcd's election, session TTL
--election-ttl), which alone publishes; a standby takes over when it dies.
Peers then connect to the external cluster's endpoints. --listen, --data-dir
and --trusted-ca-dir configure the embedded etcd and are refused with it; the
request guard of the embedded etcd does not exist on an external cluster:
see docs/external-etcd.md for what its operators must lock down.

With --node-keys-dir, the nodes' agents (run with --enable-wireguard and the
same directory) publish their WireGuard public keys there, one file per node,
and the apiserver publishes each in its node's entry; it re-reads the
directory when it changes, and ignores (and logs) a file that holds no valid
key.`

// register adds the flags to cmd.
func (af *apiserverFlags) register(cmd *cobra.Command) {
	cfg, f := &af.cfg, cmd.Flags()
	f.StringVar(&cfg.ClusterName, "cluster-name", "", "name of this cluster (a-z, 0-9, '-'; at most 32)")
	f.Uint32Var(&cfg.ClusterID, "cluster-id", 0, "id of this cluster, 1..max-connected-clusters, unique in the mesh")
	f.Uint32Var(&cfg.MaxConnectedClusters, "max-connected-clusters", wire.DefaultMaxConnectedClusters, "mesh size: 255 or 511 (the same on every cluster)")
	cfg.ExportMode = meshapiserver.ExportAll
	f.Var(&cfg.ExportMode, "export-mode", "what peers are given: all (every endpoint), global-services (the endpoints global services select) or opt-in (the endpoints whose pod, or else namespace, is labelled "+meshapiserver.SyncLabel+": \"true\"), each with the identities they use; nodes and global services always (docs/state-file.md#export-modes)")
	f.StringVar(&cfg.ListenAddress, "listen", meshapiserver.DefaultListenAddress, "host:port of the etcd client listener")
	f.StringVar(&af.certDir, "cert-dir", "", "directory with ca.crt, server.crt/key and admin-<cluster>.crt/key")
	f.StringVar(&af.stateFile, "state-file", "", "YAML file with the cluster's nodes, endpoints and services (see docs/state-file.md)")
	f.StringVar(&af.nodeKeysDir, "node-keys-dir", "", "directory of the nodes' WireGuard public keys, <node>.pub each, written by the agents (their --node-keys-dir): a node without wireguardPubKey in the state file is published with its key")
	f.StringVar(&af.stateSource, "state-source", "file", "where the cluster's state comes from: file (--state-file) or kubernetes (its API server: in a pod, the service account; else --kubeconfig)")
	f.StringVar(&af.kubeconfig, "kubeconfig", "", "with --state-source=kubernetes outside a pod: the kubeconfig to read the cluster with")
	f.StringVar(&af.kubeContext, "context", "", "with --kubeconfig: its context to use (default: the current one)")
	f.StringVar(&af.namespace, "namespace", "", "with --state-source=kubernetes: namespace of the configmap "+identitiesConfigMap+" that keeps identity numbers (default: the pod's, else "+defaultKubeNamespace+")")
	f.StringVar(&af.stateDir, "state-dir", "", "with --state-source=file: directory where identity numbers are kept across restarts (empty: in memory only)")
	f.StringVar(&af.trustedCADir, "trusted-ca-dir", "", "directory of further CA certificates (PEM, one file each) whose client certificates are accepted: peers with another mesh CA (connect --allow-mismatching-ca)")
	f.StringVar(&af.peers, "peer", "", "comma-separated clusters allowed to read this one (each connects as remote-<peer>)")
	f.BoolVar(&cfg.CiliumRemoteUser, "cilium-remote-user", false, "also let the shared user remote read, as Cilium agents of any peer log in (certificate common name remote); per-peer users (--peer) are safer: see SECURITY.md")
	f.StringVar(&af.metricsAddr, "metrics-addr", defaultAPIServerMetricsAddr, "host:port to serve Prometheus /metrics on, without authentication: loopback only by default; :9963 for every interface (\"\" disables)")
	f.StringVar(&cfg.DataDir, "data-dir", "", "etcd data directory (default: in the apiserver's private directory under $TMPDIR/clustermesh-<uid>, removed on exit or by the next start)")
	f.StringVar(&af.etcdEndpoints, "etcd-endpoints", "", "comma-separated https URLs of an external etcd cluster to publish into instead of the embedded etcd (docs/external-etcd.md)")
	f.StringVar(&cfg.EtcdCAFile, "etcd-ca", "", "with --etcd-endpoints: CA file of the etcd cluster's server certificates (default: the mesh CA of --cert-dir)")
	f.StringVar(&cfg.EtcdCertFile, "etcd-cert", "", "with --etcd-endpoints: client certificate to log in with, its common name an etcd user with the root role (default: admin-<cluster> of --cert-dir)")
	f.StringVar(&cfg.EtcdKeyFile, "etcd-key", "", "with --etcd-endpoints: the key of --etcd-cert")
	f.StringVar(&cfg.ReplicaName, "replica-name", "", "with --etcd-endpoints: this replica's name in the leader election (default: <hostname>-<pid>; in a pod, give the pod name)")
	f.DurationVar(&cfg.ElectionTTL, "election-ttl", meshapiserver.DefaultElectionTTL, "with --etcd-endpoints: TTL of this replica's election session: a standby takes over about this long after the leader died (whole seconds)")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", meshapiserver.DefaultLeaseTTL, "TTL of the lease every published entry is attached to")
	f.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", meshapiserver.DefaultHeartbeatInterval, "how often cilium/.heartbeat is written")
	for _, r := range []string{"cluster-name", "cluster-id", "cert-dir"} {
		cmd.MarkFlagRequired(r)
	}
}

// config builds the apiserver's config from the flags.
func (af *apiserverFlags) config(cmd *cobra.Command) (meshapiserver.Config, error) {
	cfg := af.cfg
	b := ca.Bundle{Dir: af.certDir, Cluster: cfg.ClusterName}
	cfg.ServerCertFile, cfg.ServerKeyFile, cfg.CAFile = b.ServerCert(), b.ServerKey(), b.CAFile()
	cfg.AdminCertFile, cfg.AdminKeyFile = b.AdminCert(), b.AdminKey()
	if af.trustedCADir != "" {
		cas, err := trustedCAFiles(af.trustedCADir)
		if err != nil {
			return cfg, err
		}
		cfg.TrustedCAFiles = cas
	}
	cfg.Peers = splitList(af.peers)
	if err := af.external(cmd, &cfg); err != nil {
		return cfg, err
	}
	if err := af.source(&cfg); err != nil {
		return cfg, err
	}
	if af.stateDir != "" {
		cfg.IdentityFile = filepath.Join(af.stateDir, "identities.json")
	}
	cfg.Logger = slog.Default()
	return cfg, nil
}

// external sets the external etcd cluster's endpoints, refusing the flags
// of the embedded etcd beside them (they would be ignored).
func (af *apiserverFlags) external(cmd *cobra.Command, cfg *meshapiserver.Config) error {
	if af.etcdEndpoints == "" {
		for _, name := range []string{"etcd-ca", "etcd-cert", "etcd-key", "replica-name", "election-ttl"} {
			if cmd.Flags().Changed(name) {
				return fmt.Errorf("--%s is for an external etcd cluster: give --etcd-endpoints too", name)
			}
		}
		return nil
	}
	for _, name := range []string{"listen", "data-dir", "trusted-ca-dir"} {
		if cmd.Flags().Changed(name) {
			return fmt.Errorf("--%s configures the embedded etcd: with --etcd-endpoints the external cluster's own configuration decides it", name)
		}
	}
	cfg.EtcdEndpoints = splitList(af.etcdEndpoints)
	return nil
}

// source sets the state source (and, from Kubernetes, the identity store).
func (af *apiserverFlags) source(cfg *meshapiserver.Config) error {
	switch af.stateSource {
	case "file":
		if af.stateFile == "" {
			return fmt.Errorf("--state-file is required with --state-source=file")
		}
		cfg.Source = &statesource.File{Path: af.stateFile, NodeKeysDir: af.nodeKeysDir, Logger: slog.Default()}
	case "kubernetes":
		if af.stateDir != "" {
			return fmt.Errorf("--state-dir with --state-source=kubernetes: identities are kept in the configmap %s/%s: drop --state-dir", kubeNamespace(af.namespace), identitiesConfigMap)
		}
		client, err := newKubeClient(af.kubeconfig, af.kubeContext)
		if err != nil {
			return fmt.Errorf("connecting the Kubernetes state source: %w", err)
		}
		cfg.Source = &k8ssource.Source{Client: client, Logger: slog.Default()}
		cfg.IdentityStore = &k8ssource.IdentityStore{Client: client, Namespace: kubeNamespace(af.namespace), Name: identitiesConfigMap}
	default:
		return fmt.Errorf("--state-source %q: want file or kubernetes", af.stateSource)
	}
	return nil
}

// runAPIServer runs the apiserver until ctx is done. The metrics listen
// once etcd serves: a bad certificate, state or identity store fails before
// anything listens.
func runAPIServer(ctx context.Context, cfg meshapiserver.Config, metricsAddr string) error {
	srv, err := meshapiserver.New(cfg)
	if err != nil {
		return err
	}
	metrics := func(ctx context.Context) error {
		select {
		case <-srv.Serving():
		case <-ctx.Done():
			return nil
		}
		return metricsserver.Serve(ctx, slog.Default(), metricsAddr, meshapiserver.NewCollector(srv))
	}
	ready := func(ctx context.Context) error {
		select {
		case <-srv.Ready():
			slog.Info("mesh apiserver ready", "cluster", cfg.ClusterName, "url", srv.ClientURL(), "peers", cfg.Peers)
		case <-ctx.Done():
		}
		return nil
	}
	return runAll(ctx, srv.Run, metrics, ready)
}

// identitiesConfigMap keeps the apiserver's identity numbers with
// --state-source=kubernetes.
const identitiesConfigMap = "clustermesh-identities"

// defaultAPIServerMetricsAddr is loopback: the metrics have no
// authentication.
const defaultAPIServerMetricsAddr = "127.0.0.1:9963"

// trustedCAFiles returns the CA certificate files in dir (files whose names
// do not start with a dot: a mounted ConfigMap's own entries do), each
// checked to hold CA certificates.
func trustedCAFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading --trusted-ca-dir: %w", err)
	}
	var files []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		f := filepath.Join(dir, e.Name())
		if fi, err := os.Stat(f); err != nil || fi.IsDir() {
			continue
		}
		if _, err := ca.LoadPool(f); err != nil {
			return nil, fmt.Errorf("checking --trusted-ca-dir: %w", err)
		}
		files = append(files, f)
	}
	return files, nil
}
