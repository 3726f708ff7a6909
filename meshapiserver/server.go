package meshapiserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// Server is one cluster's mesh apiserver. Create it with New, run it with
// Run; Ready is closed once the first snapshot and the canaries are written.
type Server struct {
	cfg        Config
	ready      chan struct{}
	txnLatency prometheus.Histogram
	guard      *requestGuard

	mu     sync.Mutex
	url    string // guarded by mu; set once etcd serves
	status Status // guarded by mu
}

// Status is what the apiserver reports about itself.
type Status struct {
	Cluster     string       `json:"cluster"`
	ClusterID   uint32       `json:"clusterID"`
	URL         string       `json:"url"`
	Ready       bool         `json:"ready"`
	Publish     PublishStats `json:"publish"`
	SourceError string       `json:"sourceError,omitempty"`
	// Denied counts, by gRPC method, the requests refused to callers that
	// are not an admin of this cluster.
	Denied map[string]uint64 `json:"denied,omitempty"`
}

// New validates cfg (after defaults) and returns a Server that is not yet
// running.
func New(cfg Config) (*Server, error) {
	cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, ready: make(chan struct{}), txnLatency: newTxnLatency()}, nil
}

// Ready is closed once the apiserver has published its first full snapshot.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// ClientURL is the https URL clients dial; empty until etcd serves.
func (s *Server) ClientURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// Status returns a snapshot of the apiserver's status.
func (s *Server) Status() Status {
	s.mu.Lock()
	st := s.status
	g := s.guard
	s.mu.Unlock()
	if g != nil {
		st.Denied = g.deniedByMethod()
	}
	return st
}

// newAdminClient is the client the apiserver publishes with. Its send limit
// is set, not clientv3's default: see the chain of limits in config.go.
func newAdminClient(ctx context.Context, url string, tlsCfg *tls.Config) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{url}, TLS: tlsCfg, DialTimeout: 5 * time.Second,
		MaxCallSendMsgSize: clientMaxSendBytes,
		Logger:             zap.NewNop(), Context: ctx,
	})
	if err != nil {
		return nil, fmt.Errorf("connecting the admin client to %s: %w", url, err)
	}
	return cli, nil
}

// Run starts etcd, sets up users and roles, and publishes the source's state
// until ctx is done or something fails; it stops etcd before returning.
func (s *Server) Run(ctx context.Context) error {
	cfg := &s.cfg
	log := cfg.Logger.With("cluster", cfg.ClusterName)
	if _, err := ca.ServerTLSConfig(cfg.ServerCertFile, cfg.ServerKeyFile, cfg.CAFile); err != nil {
		return fmt.Errorf("meshapiserver: server certificate: %w", err)
	}
	adminTLS, err := ca.ClientTLSConfig(cfg.AdminCertFile, cfg.AdminKeyFile, cfg.CAFile)
	if err != nil {
		return fmt.Errorf("meshapiserver: admin certificate: %w", err)
	}
	guard, err := newRequestGuard(cfg.ClusterName, cfg.CAFile, log)
	if err != nil {
		return err
	}
	ids, err := newIdentityAllocator(ctx, cfg.identityStore(), cfg.cluster())
	if err != nil {
		return err
	}
	etcd, err := startEtcd(ctx, cfg, guard)
	if err != nil {
		return err
	}
	defer etcd.close()
	s.mu.Lock()
	s.url, s.guard = etcd.url, guard
	s.status = Status{Cluster: cfg.ClusterName, ClusterID: cfg.ClusterID, URL: etcd.url}
	s.mu.Unlock()
	log.Info("etcd serving", "url", etcd.url, "fsync", false, "runtimeDir", etcd.run.path)

	cli, err := newAdminClient(ctx, etcd.url, adminTLS)
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := setupAuth(ctx, cli, cfg.ClusterName, cfg.Peers); err != nil {
		return err
	}
	if err := s.writeClusterConfig(ctx, cli); err != nil {
		return err
	}
	lease, err := cli.Grant(ctx, int64(cfg.LeaseTTL/time.Second))
	if err != nil {
		return fmt.Errorf("meshapiserver: grant lease: %w", err)
	}
	keepAlive, err := cli.KeepAlive(ctx, lease.ID)
	if err != nil {
		return fmt.Errorf("meshapiserver: keep lease alive: %w", err)
	}
	pub := newPublisher(cli, cfg.cluster(), log, s.txnLatency)
	pub.lease = lease.ID
	if err := pub.loadExisting(ctx); err != nil {
		return err
	}
	return s.loop(ctx, pub, ids, keepAlive)
}

func (s *Server) writeClusterConfig(ctx context.Context, cli *clientv3.Client) error {
	v, err := wire.EncodeClusterConfig(wire.ClusterConfig{ID: s.cfg.ClusterID, Capabilities: wire.Capabilities{
		SyncedCanaries: true, MaxConnectedClusters: s.cfg.MaxConnectedClusters,
	}})
	if err != nil {
		return err
	}
	if _, err := cli.Put(ctx, wire.ClusterConfigKey(s.cfg.ClusterName), string(v)); err != nil {
		return fmt.Errorf("meshapiserver: write cluster config: %w", err)
	}
	return nil
}

// loop runs the source and publishes every state it delivers (only the
// latest when several arrive during one publish), and the heartbeat.
func (s *Server) loop(parent context.Context, pub *publisher, ids *identityAllocator, keepAlive <-chan *clientv3.LeaseKeepAliveResponse) error {
	ctx, cancel := context.WithCancel(parent)
	latest := make(chan *statesource.State, 1)
	srcErr := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		srcErr <- s.cfg.Source.Run(ctx, func(st *statesource.State) {
			select { // keep only the newest state
			case <-latest:
			default:
			}
			latest <- st
		})
	}()
	defer wg.Wait() // after cancel (defers run in reverse)
	defer cancel()

	heartbeat := time.NewTicker(s.cfg.HeartbeatInterval)
	defer heartbeat.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-srcErr:
			if err != nil {
				return fmt.Errorf("meshapiserver: state source: %w", err)
			}
			return nil
		case _, ok := <-keepAlive:
			// The client closes the channel when parent ends: check parent,
			// which is cancelled before its children see it.
			if !ok && parent.Err() == nil {
				return errors.New("meshapiserver: lease keep-alive stopped: etcd unreachable or the lease expired; restart the apiserver")
			}
		case <-heartbeat.C:
			if err := pub.heartbeat(ctx); err != nil {
				s.cfg.Logger.Warn("heartbeat failed", "err", err)
			}
		case st := <-latest:
			if err := s.publish(ctx, pub, ids, st); err != nil {
				if parent.Err() != nil {
					return nil // shutting down mid-publish
				}
				return err
			}
		}
	}
}

func (s *Server) publish(ctx context.Context, pub *publisher, ids *identityAllocator, st *statesource.State) error {
	kv, allocated, err := desired(s.cfg.cluster(), st, ids, pub.endpoints)
	if err != nil {
		return err
	}
	if allocated {
		if err := ids.save(ctx, s.cfg.cluster()); err != nil {
			return err
		}
	}
	first := !pub.canariesSet
	if first {
		if err := pub.heartbeat(ctx); err != nil {
			return err
		}
	}
	if err := pub.publish(ctx, kv); err != nil {
		return err
	}
	s.mu.Lock()
	s.status.Publish = pub.stats
	s.status.Ready = true
	s.mu.Unlock()
	if first {
		close(s.ready)
	}
	return nil
}
