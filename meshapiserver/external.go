package meshapiserver

import (
	"cmp"
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/wire"
)

// An external etcd cluster (Config.EtcdEndpoints) replaces the embedded
// etcd: the apiserver connects to it as an etcd user with the root role,
// creates its users and roles there as it does on the embedded one, and
// publishes only while it leads the election among the replicas on the
// same cluster (election.go). etcd's own TLS and auth protect the store;
// the request guard of the embedded etcd does not exist there
// (docs/external-etcd.md says what operators must lock down instead).

// external reports whether the apiserver publishes into an external etcd.
func (c *Config) external() bool { return len(c.EtcdEndpoints) > 0 }

func (c *Config) externalDefaults() {
	if c.EtcdCAFile == "" {
		c.EtcdCAFile = c.CAFile
	}
	if c.EtcdCertFile == "" && c.EtcdKeyFile == "" {
		c.EtcdCertFile, c.EtcdKeyFile = c.AdminCertFile, c.AdminKeyFile
	}
	if c.ReplicaName == "" {
		host, _ := os.Hostname()
		c.ReplicaName = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if c.ElectionTTL == 0 {
		c.ElectionTTL = DefaultElectionTTL
	}
}

// validateExternal checks the fields of an external etcd cluster: the
// embedded etcd's own (listener, data directory, trusted CAs) are refused
// rather than ignored.
func (c *Config) validateExternal() error {
	for _, e := range c.EtcdEndpoints {
		u, err := url.Parse(e)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("%w: etcd endpoint %q: want https://host:port", ErrInvalidConfig, e)
		}
	}
	for _, f := range []struct{ name, v string }{
		{"etcd CA", c.EtcdCAFile}, {"etcd client certificate", c.EtcdCertFile}, {"etcd client key", c.EtcdKeyFile},
	} {
		if f.v == "" {
			return fmt.Errorf("%w: no %s file given (the mesh CA and admin certificate are used by default)", ErrInvalidConfig, f.name)
		}
	}
	if c.DataDir != "" || len(c.TrustedCAFiles) > 0 {
		return fmt.Errorf("%w: a data directory or further trusted CAs configure the embedded etcd: an external cluster's own configuration decides them", ErrInvalidConfig)
	}
	if c.ElectionTTL < time.Second || c.ElectionTTL%time.Second != 0 {
		return fmt.Errorf("%w: election TTL %s: want whole seconds, at least 1s", ErrInvalidConfig, c.ElectionTTL)
	}
	if strings.ContainsAny(c.ReplicaName, "\n") {
		return fmt.Errorf("%w: replica name %q has a newline", ErrInvalidConfig, c.ReplicaName)
	}
	return nil
}

// runExternal is Run on an external etcd cluster: connect, set up users and
// roles, then campaign; lead (publish) while elected, campaign again when
// deposed, until ctx ends or the source fails.
func (s *Server) runExternal(ctx context.Context) error {
	cfg := &s.cfg
	log := cfg.Logger.With("cluster", cfg.ClusterName, "replica", cfg.ReplicaName)
	etcdTLS, err := ca.ClientTLSConfig(cfg.EtcdCertFile, cfg.EtcdKeyFile, cfg.EtcdCAFile)
	if err != nil {
		return fmt.Errorf("loading the etcd client certificate: %w", err)
	}
	if _, err := newIdentityAllocator(ctx, cfg.identityStore(), cfg.cluster()); err != nil {
		return err // checked once before anything connects
	}
	src := startSource(ctx, cfg.Source)
	defer src.stop()
	first, err := src.first(ctx)
	if err != nil || first == nil {
		return err // nil: ctx ended first
	}
	// The client outlives ctx by the few calls of a clean shutdown
	// (resigning the election); it is closed before Run returns.
	cli, err := newAdminClient(context.WithoutCancel(ctx), cfg.EtcdEndpoints, etcdTLS)
	if err != nil {
		return err
	}
	defer cli.Close()
	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = setupAuth(setupCtx, cli, cfg.ClusterName, cfg.Peers, cfg.CiliumRemoteUser)
	cancel()
	if err != nil {
		return fmt.Errorf("setting up users and roles on etcd %s (the apiserver's user needs the root role): %w", strings.Join(cfg.EtcdEndpoints, ","), err)
	}
	s.mu.Lock()
	s.url = strings.Join(cfg.EtcdEndpoints, ",")
	s.status = Status{Cluster: cfg.ClusterName, ClusterID: cfg.ClusterID, URL: s.url, ExportMode: cfg.ExportMode,
		Replica: cfg.ReplicaName, Role: RoleStandby}
	s.mu.Unlock()
	close(s.serving)
	log.Info("connected to the external etcd cluster", "endpoints", s.url)

	// The election has a connection of its own: on the publisher's, the
	// session's keep-alives would queue behind 6 MiB transactions, and a
	// loaded leader lost its session to its own publishing.
	elCli, err := newAdminClient(context.WithoutCancel(ctx), cfg.EtcdEndpoints, etcdTLS)
	if err != nil {
		return err
	}
	defer elCli.Close()
	el := newElector(ctx, elCli, cfg, log, s.setLeaderName)
	defer func() { el.stop(s.abandoned()) }() // abandoned as Run returns
	return s.campaignLoop(ctx, cli, el, src, first, log)
}

// adopt seeds ids with the identities the store holds (decoded as agents
// decode them; an entry they would reject is not adopted and, no longer
// desired, goes) and counts a takeover when the store held entries of
// another lease.
func (s *Server) adopt(pub *publisher, ids *identityAllocator) {
	c := s.cfg.cluster()
	published := make(map[uint32]string, len(pub.existingIdentities))
	var rejected int
	var firstErr error
	for k, v := range pub.existingIdentities {
		id, err := wire.DecodeIdentity(c, k, v)
		if err != nil {
			rejected++
			firstErr = cmp.Or(firstErr, err)
			continue
		}
		published[id.ID] = id.Labels.String()
	}
	if rejected > 0 { // once per term, however many
		s.cfg.Logger.Warn("not adopting published identities agents would reject (they are replaced)", "count", rejected, "first", firstErr)
	}
	n := ids.adopt(published)
	s.cfg.Logger.Info("adopted the published state", "entries", pub.adoptable, "identities", len(published), "renumberedInStore", n)
	if pub.adoptable > 0 {
		s.mu.Lock()
		s.status.Takeovers++
		s.mu.Unlock()
	}
}
