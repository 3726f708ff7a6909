package kvstoremesh

import (
	"context"
	"encoding/json"
	"time"

	"github.com/clustermesh/clustermesh/agentsync"
)

// exportStatus writes each remote's session state for the agents
// (agentsync.CacheStatus): at once when it changes (polled every probe
// interval, and whenever a remote's kind was listed: a remote that became
// ready says so in the transaction of its last canary, not up to a probe
// interval later), and every StatusInterval regardless, so that agents can
// tell a cache that stopped from a remote that did.
func (c *Cache) exportStatus(ctx context.Context) error {
	poll := c.cfg.Sync.ProbeInterval
	if poll == 0 {
		poll = agentsync.DefaultProbeInterval
	}
	t := time.NewTicker(min(poll, c.cfg.StatusInterval))
	defer t.Stop()
	last := map[string]agentsync.CacheStatus{}
	for {
		now := time.Now()
		for _, r := range c.reader.Status().Remotes {
			cs := agentsync.CacheStatus{Connected: r.Connected, Ready: r.Ready, LastHeartbeat: r.LastHeartbeat}
			if !r.Connected {
				cs.LastError = r.LastError
			}
			prev, seen := last[r.Name]
			cs.Updated = prev.Updated
			if seen && sameStatus(prev, cs) && now.Sub(prev.Updated) < c.cfg.StatusInterval {
				continue
			}
			cs.Updated = now
			b, err := json.Marshal(cs)
			if err != nil {
				return err
			}
			c.w.putStatus(r.Name, b)
			last[r.Name] = cs
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-c.w.listed:
		}
	}
}

func sameStatus(a, b agentsync.CacheStatus) bool {
	return a.Connected == b.Connected && a.Ready == b.Ready && a.LastHeartbeat.Equal(b.LastHeartbeat) && a.LastError == b.LastError
}
