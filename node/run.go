package node

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/internal/metricsserver"
	"github.com/clustermesh/clustermesh/observe"
)

// part is one long-running piece of the agent.
type part struct {
	// op names what it does, for its error: "syncing with the remotes".
	op  string
	run func(context.Context) error
}

// parts are the agent's pieces for Run; srcs are the hub's flow sources
// (none without a hub).
func (n *Node) parts(srcs []*flows.Reader) []part {
	c := &n.cfg
	ps := []part{
		{"reading the local state", n.local.Run},
		{"syncing with the remote clusters", n.sync.Run},
	}
	if n.wg != nil {
		// The device opens at the first local state and is removed when
		// this returns.
		ps = append(ps, part{"running WireGuard", func(ctx context.Context) error { return n.wg.Run(ctx, nil) }})
	}
	if n.enf != nil {
		ps = append(ps,
			part{"handing the local state to the enforcer", func(ctx context.Context) error { return n.enfLocal.Run(ctx, n.enf.SetLocalState) }},
			part{"enforcing policy", n.runEnforcer})
	}
	if n.kube != nil {
		ps = append(ps, part{"watching the cluster's policies", n.kube.Run})
	}
	if n.l7 != nil {
		ps = append(ps, part{"running the L7 proxy", n.l7.run})
	}
	if len(srcs) > 0 {
		ps = append(ps, part{"reading the flows", func(ctx context.Context) error {
			sources := make([]observe.Source, len(srcs))
			for i, r := range srcs {
				sources[i] = r
			}
			if err := n.hub.Run(ctx, sources...); err != nil {
				// Policy keeps being enforced; only observation stops.
				n.log.Error("flow events can no longer be read: 'hubble observe' shows no new flows (restart the agent)", "err", err)
				<-ctx.Done()
			}
			return nil
		}},
			part{"naming services for flows", n.names.run},
			part{"following the mesh's nodes for the peer service", n.peers.run},
			part{"serving Hubble's Observer API", n.serveObserver})
	}
	if n.export != nil && len(srcs) > 0 {
		ps = append(ps, part{"exporting flows", func(ctx context.Context) error { return n.export.Run(ctx, n.hub) }})
	}
	if c.StatusAddr != "" {
		ps = append(ps, part{"serving the status", func(ctx context.Context) error {
			return ServeStatus(ctx, c.StatusAddr, func() any { return n.Status() }, nil)
		}})
	}
	if c.MetricsAddr != "" {
		ps = append(ps, part{"serving the metrics", func(ctx context.Context) error {
			return metricsserver.Serve(ctx, n.log, c.MetricsAddr, n.collectors()...)
		}})
	}
	return ps
}

// runEnforcer runs the enforcer, which writes the policy map only once the
// sync agent has synced, and never before the cluster's policy objects
// are in.
func (n *Node) runEnforcer(ctx context.Context) error {
	if n.kube != nil {
		select {
		case <-n.kube.Synced():
		case <-ctx.Done():
			return nil
		}
	}
	return n.enf.Run(ctx, n.sync.Pruned())
}

// errStopped is the error of a part that returned while the agent ran.
var errStopped = errors.New("stopped while the agent was running")

// runParts runs every part until ctx is done or one of them returns; then
// it stops the others, waits for them and returns the error of the one
// that returned first (nil when ctx ended the agent).
func runParts(parent context.Context, ps []part) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	ended := make(chan error, len(ps))
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(func() {
			err := p.run(ctx)
			if err == nil && ctx.Err() == nil {
				err = errStopped
			}
			if err != nil {
				err = fmt.Errorf("%s: %w", p.op, err)
			}
			ended <- err
		})
	}
	var err error
	select {
	case err = <-ended:
	case <-ctx.Done():
	}
	cancel()
	wg.Wait()
	if parent.Err() != nil {
		return nil // stopped: what the parts said while stopping is no failure
	}
	return err
}
