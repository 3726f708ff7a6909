package localmesh

import (
	"context"
	"fmt"
	"time"

	"github.com/clustermesh/clustermesh/relay"
)

// StartRelay starts a relay of the whole mesh (Options.Hubble) serving on
// the unix socket sock: it finds every agent through the peer service of
// cluster's first agent and dials them with that cluster's Observer client
// certificate. It returns once the relay serves; stop ends it and waits.
func (m *Mesh) StartRelay(ctx context.Context, cluster, sock string) (stop func() error, err error) {
	c := m.Cluster(cluster)
	if c == nil || len(c.Agents) == 0 || c.Agents[0].HubbleSocket == "" {
		return nil, fmt.Errorf("localmesh: cluster %q has no agent serving Hubble (Options.Hubble)", cluster)
	}
	cfg := relay.DefaultConfig()
	cfg.PeerServices, cfg.UnixSocket = []string{"unix://" + c.Agents[0].HubbleSocket}, sock
	cfg.CAFile, cfg.ClientCertFile, cfg.ClientKeyFile = c.Bundle.CAFile(), c.Bundle.ObserverClientCert(), c.Bundle.ObserverClientKey()
	// Loopback timings: an agent that is not there is reported quickly.
	cfg.SortWindow, cfg.DialTimeout, cfg.MaxBackoff = 100*time.Millisecond, time.Second, time.Second
	cfg.Log = m.opts.Logger
	r, err := relay.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("localmesh: configuring the relay: %w", err)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	select {
	case <-r.Serving():
	case err := <-done:
		cancel()
		return nil, fmt.Errorf("localmesh: starting the relay: %w", err)
	case <-ctx.Done():
		cancel()
		<-done
		return nil, ctx.Err()
	}
	return func() error { cancel(); return <-done }, nil
}
