// Package meshapiserver owns one cluster's mesh apiserver: an embedded etcd
// that serves only mesh-CA clients over mutual TLS, its users and roles
// (admin-<cluster> writes, remote-<peer> reads the published prefixes and
// nothing else), and the publisher that turns the cluster's local state into
// Cilium-format entries — batched transactions on one lease, synced canaries
// after the first full snapshot, the cluster config and a heartbeat. With
// Config.EtcdEndpoints it publishes into an external etcd cluster instead,
// where replicas elect one leader with etcd's election and every write is
// fenced on the leader's election key (external.go, election.go;
// docs/external-etcd.md).
package meshapiserver

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// Defaults of Config.
const (
	DefaultListenAddress     = "0.0.0.0:2379"
	DefaultLeaseTTL          = 15 * time.Minute
	DefaultHeartbeatInterval = time.Minute
	// DefaultHistoryRetention is how long etcd keeps superseded revisions
	// before compacting them: an agent whose watch lags further behind
	// lists again. Without compaction every change stays in the store
	// until it reaches etcd's 2 GiB quota and refuses every write.
	DefaultHistoryRetention = 5 * time.Minute
	// DefaultElectionTTL is the TTL of a replica's election session on an
	// external etcd cluster: a standby takes over about this long after the
	// leader died (docs/external-etcd.md).
	DefaultElectionTTL = 5 * time.Second
)

// The size limits of publishing, one chain from the smallest to the largest.
// Each layer must accept what the layer before it lets through, or the larger
// side is refused by the smaller one (the apiserver used to batch 4 MiB
// transactions through a client that sends at most 2 MiB):
//
//	an entry                 ≤ wire.MaxKeyBytes + wire.MaxValueBytes (what every agent accepts;
//	                           the publisher refuses a larger one, see publisher.check)
//	+ its transaction overhead
//	≤ txnBudgetBytes         what the publisher puts in one transaction, measured as gRPC
//	                           measures the message (the TxnRequest's protobuf size)
//	≤ clientMaxSendBytes     the admin client's MaxCallSendMsgSize (clientv3's default is 2 MiB)
//	≤ maxRequestBytes        etcd's MaxRequestBytes, which it applies to the raft request that
//	  − raftRequestOverhead    wraps the TxnRequest with a header (its gRPC server receives up to
//	                           MaxRequestBytes + 512 KiB)
//
// TestLimitsChain checks every relation, with the encodings etcd uses.
// maxTxnOps is etcd's limit on operations per transaction, above the
// publisher's txnBudgetOps.
const (
	txnBudgetBytes      = 6 << 20
	clientMaxSendBytes  = txnBudgetBytes + 256<<10
	raftRequestOverhead = 4 << 10
	maxRequestBytes     = clientMaxSendBytes + 256<<10
	txnBudgetOps        = 2048
	maxTxnOps           = 4096
	txnParallel         = 4
)

// What an external etcd cluster must accept (docs/external-etcd.md): its
// --max-txn-ops and --max-request-bytes at least these (etcd's defaults,
// 128 and 1.5 MiB, refuse the publisher's transactions).
const (
	ExternalEtcdMinTxnOps       = txnBudgetOps
	ExternalEtcdMinRequestBytes = maxRequestBytes
)

// ErrInvalidConfig is wrapped by every Config.Validate error.
var ErrInvalidConfig = errors.New("invalid apiserver config")

// Config of a mesh apiserver. Zero durations and sizes take the defaults.
type Config struct {
	ClusterName          string
	ClusterID            uint32
	MaxConnectedClusters uint32 // default 255

	// ListenAddress is host:port of the etcd client listener; port 0 picks a
	// free port (read it back from ClientURL).
	ListenAddress string

	// Mesh TLS: the server certificate, the CA that signs every client, and
	// the admin-<cluster> client certificate the apiserver writes with.
	ServerCertFile, ServerKeyFile string
	CAFile                        string
	AdminCertFile, AdminKeyFile   string
	// TrustedCAFiles are further CAs whose client certificates are accepted
	// (peers with another mesh CA). They can read as any user, but only a
	// certificate of CAFile can write: a certificate named admin-<cluster>
	// or root from one of these CAs is refused every write.
	TrustedCAFiles []string

	// Peers are the clusters allowed to read: each gets the etcd user
	// remote-<peer> with the read-only role; no other user can read. (The
	// cluster's own agents read local state from the state source.)
	Peers []string
	// CiliumRemoteUser adds the user remote, with the same read-only role,
	// beside the per-peer users: the one user Cilium agents log in as
	// (their certificate's common name is remote). Every holder of a
	// remote certificate then reads as any other peer, and one peer
	// cannot be revoked without re-keying all (SECURITY.md). Off by
	// default; when off, a user remote left by an earlier run is removed.
	CiliumRemoteUser bool

	// DataDir holds etcd's data; empty means a directory in the runtime
	// directory (the store is re-derived from the source on every start).
	DataDir string
	// RuntimeDir is the parent of the apiserver's private directory (mode
	// 0700: etcd's data unless DataDir is set, and the unix sockets of its
	// peer and HTTP listeners). Empty means $TMPDIR/clustermesh-<uid>. Every
	// start removes the directories of apiservers that died without
	// removing their own (SIGKILL, OOM kill).
	RuntimeDir string
	// IdentityFile persists identity numbers across restarts; empty keeps
	// them in memory only. IdentityStore, when set, persists them instead
	// (set at most one of the two).
	IdentityFile  string
	IdentityStore IdentityStore

	Source statesource.Source
	// ExportMode is what peers are given of the cluster's endpoints and
	// identities (ExportAll when empty). In a mode that holds endpoints
	// back, the cluster's own agents read every endpoint and identity in
	// the local view (wire.LocalViewPrefix): see
	// docs/state-file.md#export-modes.
	ExportMode ExportMode

	// EtcdEndpoints, when set, are the https client URLs of an external
	// etcd cluster the apiserver publishes into instead of starting the
	// embedded one (docs/external-etcd.md). Replicas of the apiserver on
	// the same endpoints elect one leader, which alone publishes.
	EtcdEndpoints []string
	// TLS to the external cluster: its CA, and the client certificate the
	// apiserver logs in with (its common name is an etcd user with the
	// root role). Empty: the mesh CA (CAFile) and the admin-<cluster>
	// certificate (AdminCertFile, AdminKeyFile).
	EtcdCAFile, EtcdCertFile, EtcdKeyFile string
	// ReplicaName names this replica in the election (status, logs); empty
	// means <hostname>-<pid>.
	ReplicaName string
	// ElectionTTL is the TTL of this replica's election session
	// (DefaultElectionTTL): how long a dead leader keeps the lead.
	ElectionTTL time.Duration

	LeaseTTL          time.Duration
	HeartbeatInterval time.Duration
	Logger            *slog.Logger

	// historyRetention is how long etcd keeps superseded revisions
	// (DefaultHistoryRetention; tests shorten it).
	historyRetention time.Duration
}

func (c *Config) withDefaults() {
	if c.MaxConnectedClusters == 0 {
		c.MaxConnectedClusters = wire.DefaultMaxConnectedClusters
	}
	if c.ListenAddress == "" {
		c.ListenAddress = DefaultListenAddress
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = DefaultLeaseTTL
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.historyRetention == 0 {
		c.historyRetention = DefaultHistoryRetention
	}
	if c.ExportMode == "" {
		c.ExportMode = ExportAll
	}
	if c.external() {
		c.externalDefaults()
	}
}

// Validate checks the config after defaults.
func (c *Config) Validate() error {
	if err := c.cluster().Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if c.external() {
		if err := c.validateExternal(); err != nil {
			return err
		}
	} else {
		for _, f := range []struct{ name, v string }{
			{"server certificate", c.ServerCertFile}, {"server key", c.ServerKeyFile}, {"CA", c.CAFile},
			{"admin certificate", c.AdminCertFile}, {"admin key", c.AdminKeyFile},
		} {
			if f.v == "" {
				return fmt.Errorf("%w: no %s file given", ErrInvalidConfig, f.name)
			}
		}
	}
	for _, p := range c.Peers {
		if err := wire.ValidateClusterName(p); err != nil {
			return fmt.Errorf("%w: peer: %w", ErrInvalidConfig, err)
		}
	}
	if c.Source == nil {
		return fmt.Errorf("%w: no state source", ErrInvalidConfig)
	}
	if _, err := ParseExportMode(string(c.ExportMode)); err != nil {
		return err
	}
	if c.IdentityFile != "" && c.IdentityStore != nil {
		return fmt.Errorf("%w: both an identity file and an identity store: set one", ErrInvalidConfig)
	}
	if c.LeaseTTL < 10*time.Second {
		return fmt.Errorf("%w: lease TTL %s is below 10s", ErrInvalidConfig, c.LeaseTTL)
	}
	return nil
}

// identityStore is where identity numbers persist; nil keeps them in memory.
func (c *Config) identityStore() IdentityStore {
	if c.IdentityStore != nil {
		return c.IdentityStore
	}
	if c.IdentityFile != "" {
		return IdentityFile{Path: c.IdentityFile}
	}
	return nil
}

func (c *Config) cluster() wire.Cluster {
	return wire.Cluster{Name: c.ClusterName, ID: c.ClusterID, MaxConnectedClusters: c.MaxConnectedClusters}
}
