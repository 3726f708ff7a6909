package meshapiserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// Server is one cluster's mesh apiserver. Create it with New, run it with
// Run; Serving is closed once etcd serves, Ready once the first snapshot and
// the canaries are written.
type Server struct {
	cfg        Config
	serving    chan struct{}
	ready      chan struct{}
	txnLatency prometheus.Histogram
	guard      *requestGuard

	mu     sync.Mutex
	url    string // guarded by mu; set once etcd serves
	status Status // guarded by mu

	// abandon makes Run return as a killed process would: without
	// resigning the election or revoking its session (tests).
	abandon atomic.Bool
	// afterTxn, when set before Run, is called after each publishing
	// transaction of a term on an external etcd (tests).
	afterTxn func()
}

func (s *Server) abandoned() bool { return s.abandon.Load() }

// Status is what the apiserver reports about itself.
type Status struct {
	Cluster     string       `json:"cluster"`
	ClusterID   uint32       `json:"clusterID"`
	URL         string       `json:"url"`
	Ready       bool         `json:"ready"`
	Publish     PublishStats `json:"publish"`
	SourceError string       `json:"sourceError,omitempty"`
	// PublishError is the error of the last publish attempt while
	// publishing fails (retried with backoff), since PublishFailingSince;
	// empty once a publish succeeded. PublishFailures counts failed
	// attempts since start.
	PublishError        string    `json:"publishError,omitempty"`
	PublishFailingSince time.Time `json:"publishFailingSince,omitzero"`
	PublishFailures     uint64    `json:"publishFailures"`
	// LeaseRenewals counts the leases granted after the previous one was
	// lost (expired or revoked), every entry then written again.
	LeaseRenewals uint64 `json:"leaseRenewals"`
	// Denied counts, by gRPC method, the requests refused to callers that
	// are not an admin of this cluster.
	Denied map[string]uint64 `json:"denied,omitempty"`
	// ExportMode is what peers are given (Config.ExportMode);
	// EndpointsNotExported counts the endpoints of the last state it held
	// back.
	ExportMode           ExportMode `json:"exportMode"`
	EndpointsNotExported int        `json:"endpointsNotExported"`
	// LocalViewEntries counts the entries published in the local view
	// (wire.LocalViewPrefix: every endpoint and identity, for the cluster's
	// own agents), 0 with ExportAll, which publishes none.
	LocalViewEntries int `json:"localViewEntries"`

	// On an external etcd cluster (Config.EtcdEndpoints): this replica's
	// name, its role (RoleLeader or RoleStandby), the leader's name (empty
	// while none leads), the terms this replica led, and the takeovers
	// among them: terms that began by adopting entries another leader
	// (or an earlier term) had published.
	Replica   string `json:"replica,omitempty"`
	Role      string `json:"role,omitempty"`
	Leader    string `json:"leader,omitempty"`
	Terms     uint64 `json:"terms,omitempty"`
	Takeovers uint64 `json:"takeovers,omitempty"`
	// LeaderSince is when this replica's current term began (zero while
	// it stands by).
	LeaderSince time.Time `json:"leaderSince,omitzero"`
}

// New validates cfg (after defaults) and returns a Server that is not yet
// running.
func New(cfg Config) (*Server, error) {
	cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, serving: make(chan struct{}), ready: make(chan struct{}), txnLatency: newTxnLatency()}, nil
}

// Serving is closed once etcd serves (ClientURL is set): after the
// certificates, the identity store and the first state were read, so that
// whatever listens beside the apiserver (metrics) can wait for it and
// nothing listens when one of them is bad.
func (s *Server) Serving() <-chan struct{} { return s.serving }

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
func newAdminClient(ctx context.Context, urls []string, tlsCfg *tls.Config) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: urls, TLS: tlsCfg, DialTimeout: 5 * time.Second,
		MaxCallSendMsgSize: clientMaxSendBytes,
		Logger:             zap.NewNop(), Context: ctx,
	})
	if err != nil {
		return nil, fmt.Errorf("connecting the admin client to %s: %w", strings.Join(urls, ","), err)
	}
	return cli, nil
}

// Run checks the certificates, opens the identity store and reads the
// source's first state, then starts etcd, sets up users and roles, and
// publishes the source's state until ctx is done or the source fails; it
// stops etcd before returning. A bad certificate, identity store or state
// fails Run before anything listens or a runtime directory is created; the
// source's error is returned as it is (it names the file or the object). A
// failed publish does not end Run: it is retried with backoff and reported
// (Status, metrics) until the store takes it.
func (s *Server) Run(ctx context.Context) error {
	cfg := &s.cfg
	if cfg.external() {
		return s.runExternal(ctx)
	}
	log := cfg.Logger.With("cluster", cfg.ClusterName)
	if _, err := ca.ServerTLSConfig(cfg.ServerCertFile, cfg.ServerKeyFile, cfg.CAFile); err != nil {
		return fmt.Errorf("loading the server certificate: %w", err)
	}
	adminTLS, err := ca.ClientTLSConfig(cfg.AdminCertFile, cfg.AdminKeyFile, cfg.CAFile)
	if err != nil {
		return fmt.Errorf("loading the admin certificate: %w", err)
	}
	guard, err := newRequestGuard(cfg.ClusterName, cfg.CAFile, log)
	if err != nil {
		return err
	}
	ids, err := newIdentityAllocator(ctx, cfg.identityStore(), cfg.cluster())
	if err != nil {
		return err
	}
	src := startSource(ctx, cfg.Source)
	defer src.stop()
	first, err := src.first(ctx)
	if err != nil || first == nil {
		return err // nil: ctx ended first
	}
	etcd, err := startEtcd(ctx, cfg, guard)
	if err != nil {
		return err
	}
	defer etcd.close()
	s.mu.Lock()
	s.url, s.guard = etcd.url, guard
	s.status = Status{Cluster: cfg.ClusterName, ClusterID: cfg.ClusterID, URL: etcd.url, ExportMode: cfg.ExportMode}
	s.mu.Unlock()
	close(s.serving)
	log.Info("etcd serving", "url", etcd.url, "fsync", false, "runtimeDir", etcd.run.path)

	cli, err := newAdminClient(ctx, []string{etcd.url}, adminTLS)
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := setupAuth(ctx, cli, cfg.ClusterName, cfg.Peers, cfg.CiliumRemoteUser); err != nil {
		return err
	}
	pub := newPublisher(cli, cfg.cluster(), cfg.ExportMode.localView(), log, s.txnLatency)
	err = s.loop(ctx, cli, pub, ids, src, &runState{state: first, due: true}, nil)
	if errors.Is(err, ErrNotLeader) {
		return nil // not on the embedded etcd: nothing fences it
	}
	return err
}

// writeClusterConfig writes cilium/cluster-config/<cluster> on lease, as
// Cilium's clustermesh-apiserver does (clustercfg.Set in
// pkg/clustermesh/clustercfg/clustercfg.go: UpdateIfDifferent with a
// lease), so that it goes with the apiserver and the entries it describes.
func (s *Server) writeClusterConfig(ctx context.Context, pub *publisher, lease clientv3.LeaseID) error {
	v, err := wire.EncodeClusterConfig(wire.ClusterConfig{ID: s.cfg.ClusterID, Capabilities: wire.Capabilities{
		SyncedCanaries: true, MaxConnectedClusters: s.cfg.MaxConnectedClusters, ServiceExportsEnabled: serviceExportsEnabled(),
		LocalView: s.cfg.ExportMode.localView(),
	}})
	if err != nil {
		return err
	}
	if err := pub.put(ctx, wire.ClusterConfigKey(s.cfg.ClusterName), string(v), lease); err != nil {
		return fmt.Errorf("writing cluster config: %w", err)
	}
	return nil
}

// Backoff of failed publish attempts.
const (
	retryInitial = 100 * time.Millisecond
	retryMax     = 30 * time.Second
)

// runState is what the run loop knows about the lease and the state to
// publish.
type runState struct {
	keepAlive <-chan *clientv3.LeaseKeepAliveResponse // nil without a lease
	hasLease  bool
	leases    int                // granted so far
	state     *statesource.State // the newest from the source; nil before the first
	due       bool               // state (or everything, on a new lease) is not published yet
}

// sourceRun runs the state source in a goroutine of its own, from before
// etcd starts until Run returns.
type sourceRun struct {
	latest chan *statesource.State // the newest state not taken yet (capacity 1)
	done   chan error              // the source's Run result (capacity 1)
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startSource(parent context.Context, src statesource.Source) *sourceRun {
	ctx, cancel := context.WithCancel(parent)
	r := &sourceRun{latest: make(chan *statesource.State, 1), done: make(chan error, 1), cancel: cancel}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.done <- src.Run(ctx, func(st *statesource.State) {
			select { // keep only the newest state, with what changed since the one taken
			case prev := <-r.latest:
				st = withMergedChanges(prev, st)
			default:
			}
			r.latest <- st
		})
	}()
	return r
}

// first waits for the source's first state; it returns nil and no error
// when ctx ends first.
func (r *sourceRun) first(ctx context.Context) (*statesource.State, error) {
	select {
	case st := <-r.latest:
		return st, nil
	case err := <-r.done:
		switch {
		case ctx.Err() != nil:
			return nil, nil
		case err == nil:
			return nil, errors.New("reading the cluster's state: the source ended without delivering one")
		}
		return nil, err
	case <-ctx.Done():
		return nil, nil
	}
}

// stop ends the source and waits for it.
func (r *sourceRun) stop() {
	r.cancel()
	r.wg.Wait()
}

// loop publishes rs.state and every state the source delivers after it
// (only the latest when several arrive during one publish), and the
// heartbeat. A failed attempt is retried with exponential backoff; a lost
// lease is replaced and everything written again on the new one. It
// returns ErrNotLeader once lost is closed or a fenced write is refused
// (an elected replica's term ended), nil when ctx ends.
func (s *Server) loop(ctx context.Context, cli *clientv3.Client, pub *publisher, ids *identityAllocator, src *sourceRun, rs *runState, lost <-chan struct{}) error {
	heartbeat := time.NewTicker(s.cfg.HeartbeatInterval)
	defer heartbeat.Stop()
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = retryInitial, retryMax, 0
	retry := time.NewTimer(0) // the first attempt takes the lease
	defer retry.Stop()
	retryArmed := true
	var deposed error
	attempt := func() {
		err := s.attempt(ctx, cli, pub, ids, rs)
		if ctx.Err() != nil {
			return // shutting down mid-publish
		}
		if errors.Is(err, ErrNotLeader) {
			deposed = err
			return
		}
		if err != nil {
			d := bo.NextBackOff()
			s.publishFailed(err, d)
			retry.Reset(d)
			retryArmed = true
			return
		}
		bo.Reset()
		s.publishSucceeded(pub)
	}
	for deposed == nil {
		select {
		case <-ctx.Done():
			return nil
		case <-lost:
			return fmt.Errorf("%w: the election session expired", ErrNotLeader)
		case err := <-src.done:
			return err // nil: the source ended
		case _, ok := <-rs.keepAlive:
			// The client closes the channel when the lease is gone (expired,
			// revoked) or when ctx ends.
			if !ok && ctx.Err() == nil {
				s.cfg.Logger.Warn("publishing lease lost (expired or revoked): granting another, writing every entry again")
				rs.keepAlive, rs.hasLease = nil, false
				if !retryArmed {
					attempt()
				}
			}
		case <-heartbeat.C:
			if !rs.hasLease {
				continue // the next attempt takes a lease and writes it
			}
			if err := pub.heartbeat(ctx); err != nil {
				if errors.Is(err, ErrNotLeader) {
					return err
				}
				s.cfg.Logger.Warn("heartbeat failed", "err", err)
				if errors.Is(err, rpctypes.ErrLeaseNotFound) {
					rs.hasLease = false
					if !retryArmed {
						attempt()
					}
				}
			}
		case st := <-src.latest:
			if rs.due && rs.state != nil { // rs.state is not published: st's changes are from before it
				st = withMergedChanges(rs.state, st)
			}
			rs.state, rs.due = st, true
			if !retryArmed {
				attempt()
			}
		case <-retry.C:
			retryArmed = false
			attempt()
		}
	}
	return deposed
}

// attempt takes a lease if there is none, then publishes the newest state
// if it is not published yet.
func (s *Server) attempt(ctx context.Context, cli *clientv3.Client, pub *publisher, ids *identityAllocator, rs *runState) error {
	if !rs.hasLease {
		if err := s.takeLease(ctx, cli, pub, ids, rs); err != nil {
			return err
		}
	}
	if rs.state == nil || !rs.due {
		return nil
	}
	err := s.publish(ctx, pub, ids, rs.state)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		rs.hasLease = false // the next attempt takes another
	}
	if err != nil {
		return err
	}
	rs.due = false
	return nil
}

// takeLease grants the lease the entries are written on, writes the
// cluster config on it and keeps it alive. The first time, it reads what the
// store holds already; after a lost lease, every entry is written again on
// the new one.
func (s *Server) takeLease(ctx context.Context, cli *clientv3.Client, pub *publisher, ids *identityAllocator, rs *runState) error {
	ttl := int64(s.cfg.LeaseTTL / time.Second)
	lease, err := cli.Grant(ctx, ttl)
	if err != nil {
		return fmt.Errorf("granting a lease of %ds: %w", ttl, err)
	}
	// Before the lease is kept alive: if this fails, the lease expires and
	// the next attempt takes another.
	if err := s.writeClusterConfig(ctx, pub, lease.ID); err != nil {
		return err
	}
	ka, err := cli.KeepAlive(ctx, lease.ID)
	if err != nil {
		return fmt.Errorf("keeping lease %x alive: %w", lease.ID, err)
	}
	if rs.leases == 0 {
		pub.lease = lease.ID
		if err := pub.loadExisting(ctx); err != nil {
			return err // the next attempt takes another lease; this one expires
		}
		if s.cfg.external() {
			s.adopt(pub, ids)
		}
	} else {
		pub.useLease(lease.ID)
		s.mu.Lock()
		s.status.LeaseRenewals++
		s.mu.Unlock()
	}
	rs.leases++
	rs.keepAlive, rs.hasLease, rs.due = ka, true, true
	return nil
}

// publish publishes st: only what its Changes touch when they name only
// endpoints and the state before it is published on this lease (see
// incremental.go), else the whole state. A failure makes the next publish
// a whole one.
func (s *Server) publish(ctx context.Context, pub *publisher, ids *identityAllocator, st *statesource.State) (err error) {
	defer func() {
		if err != nil {
			pub.endpoints.inc.valid = false
		}
	}()
	if pub.canariesSet && !pub.rewrite {
		d, _, held, ok, err := desiredChanges(s.cfg.cluster(), st, s.cfg.ExportMode, ids, pub.endpoints)
		if err != nil {
			return err
		}
		if ok {
			s.setHeld(held)
			if err := ids.saveIfNeeded(ctx, s.cfg.cluster()); err != nil {
				return err
			}
			return pub.publishChanges(ctx, d.puts, d.dels)
		}
	}
	return s.publishAll(ctx, pub, ids, st)
}

// setHeld reports how many endpoints the export mode holds back.
func (s *Server) setHeld(held int) {
	s.mu.Lock()
	s.status.EndpointsNotExported = held
	s.mu.Unlock()
}

// publishAll publishes the whole of st.
func (s *Server) publishAll(ctx context.Context, pub *publisher, ids *identityAllocator, st *statesource.State) error {
	kv, _, held, err := desired(s.cfg.cluster(), st, s.cfg.ExportMode, ids, pub.endpoints)
	if err != nil {
		return err
	}
	s.setHeld(held)
	if err := ids.saveIfNeeded(ctx, s.cfg.cluster()); err != nil {
		return err
	}
	if !pub.canariesSet {
		// The first snapshot (or the first on a new lease): the heartbeat
		// is there before the canaries.
		if err := pub.heartbeat(ctx); err != nil {
			return err
		}
	}
	return pub.publish(ctx, kv)
}

// publishFailed reports a failed attempt, retried after d.
func (s *Server) publishFailed(err error, d time.Duration) {
	s.cfg.Logger.Warn("publishing failed, retrying", "err", err, "retryIn", d.Round(time.Millisecond))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status.PublishError == "" {
		s.status.PublishFailingSince = time.Now()
	}
	s.status.PublishError = err.Error()
	s.status.PublishFailures++
}

// publishSucceeded reports a successful attempt (the first one makes the
// server ready).
func (s *Server) publishSucceeded(pub *publisher) {
	s.mu.Lock()
	if s.status.PublishError != "" {
		s.cfg.Logger.Info("publishing again", "failingFor", time.Since(s.status.PublishFailingSince).Round(time.Millisecond), "failures", s.status.PublishFailures)
	}
	s.status.PublishError, s.status.PublishFailingSince = "", time.Time{}
	s.status.Publish = pub.stats
	s.status.LocalViewEntries = pub.stats.LocalViewEntries
	wasReady := s.status.Ready
	s.status.Ready = s.status.Ready || pub.canariesSet
	ready := s.status.Ready
	s.mu.Unlock()
	if ready && !wasReady {
		close(s.ready)
	}
}
