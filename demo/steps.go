package demo

import (
	"context"
	"fmt"
	"time"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/localmesh"
)

// The sample state: per cluster 2 nodes, 4 pods (3 checkout, 1 frontend),
// 2 identities, 1 global service with 3 backends.
const (
	wantNodes, wantEndpoints, wantIdentities, wantServices = 2, 4, 2, 1
	backendsPerCluster                                     = 3
)

var checkout = datapath.Frontend{Addr: localmesh.CheckoutIP, Port: 80, Protocol: datapath.TCP}

// waitUntil polls cond every millisecond until it holds or ctx ends; the
// error says what was last seen.
func waitUntil(ctx context.Context, cond func() (bool, string)) error {
	return waitOr(ctx, func() error { return nil }, cond)
}

// waitUntil is waitUntil on the mesh: it gives up as soon as an agent has
// ended (a port it could not bind, a part that failed), saying which and
// why, instead of waiting for the deadline.
func (d *run) waitUntil(ctx context.Context, cond func() (bool, string)) error {
	return waitOr(ctx, d.m.Failure, cond)
}

// waitOr polls cond every millisecond until it holds, failed returns an
// error, or ctx ends.
func waitOr(ctx context.Context, failed func() error, cond func() (bool, string)) error {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		ok, seen := cond()
		if ok {
			return nil
		}
		if err := failed(); err != nil {
			return fmt.Errorf("not reached (last seen: %s): %w", seen, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not reached before the deadline; last seen: %s", seen)
		case <-t.C:
		}
	}
}

func remote(st agentsync.Status, name string) (agentsync.RemoteStatus, bool) {
	for _, r := range st.Remotes {
		if r.Name == name {
			return r, true
		}
	}
	return agentsync.RemoteStatus{}, false
}

func (d *run) allReady(ctx context.Context) (string, error) {
	agents := 0
	err := d.waitUntil(ctx, func() (bool, string) {
		agents = 0
		for _, c := range d.m.Clusters {
			for _, a := range c.Agents {
				st := a.Sync.Status()
				for _, peer := range d.m.Clusters {
					if peer == c {
						continue
					}
					r, _ := remote(st, peer.Name)
					if !r.Ready || r.ClusterID != peer.ID || r.Nodes != wantNodes || r.Endpoints != wantEndpoints ||
						r.Identities != wantIdentities || r.Services != wantServices {
						return false, fmt.Sprintf("%s sees %s: ready=%v id=%d nodes=%d endpoints=%d identities=%d services=%d err=%q",
							a.Name, peer.Name, r.Ready, r.ClusterID, r.Nodes, r.Endpoints, r.Identities, r.Services, r.LastError)
					}
				}
				agents++
			}
		}
		return true, ""
	})
	return fmt.Sprintf("%d agents × 2 remotes, each: %d nodes, %d endpoints, %d identities, %d service",
		agents, wantNodes, wantEndpoints, wantIdentities, wantServices), err
}

// backendsByCluster counts the selected checkout backends per cluster id in
// an agent's datapath.
func backendsByCluster(a *localmesh.Agent) (map[uint16]int, error) {
	svcs, err := a.Datapath.Services()
	if err != nil {
		return nil, err
	}
	out := map[uint16]int{}
	for _, b := range svcs[checkout] {
		out[b.ClusterID]++
	}
	return out, nil
}

// eastSelects waits until every east agent's service map selects exactly
// want (cluster id → backends).
func (d *run) eastSelects(ctx context.Context, want map[uint16]int) error {
	return d.waitUntil(ctx, func() (bool, string) {
		for _, a := range d.m.Cluster("east").Agents {
			got, err := backendsByCluster(a)
			if err != nil {
				return false, err.Error()
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return false, fmt.Sprintf("%s selects %v, want %v", a.Name, got, want)
			}
		}
		return true, ""
	})
}

func (d *run) failover(ctx context.Context) (string, error) {
	east := d.m.Cluster("east")
	st := demoState(1)
	localmesh.SetReady(st, "checkout", false)
	start := time.Now()
	if err := east.WriteState(st); err != nil {
		return "", err
	}
	if err := d.eastSelects(ctx, map[uint16]int{2: backendsPerCluster, 3: backendsPerCluster}); err != nil {
		return "", fmt.Errorf("failing over: %w", err)
	}
	failover := time.Since(start)

	// While east depends on remote backends, a backend change in west's
	// state file must reach east's service map.
	west := d.m.Cluster("west")
	wst := demoState(2)
	wst.Endpoints = wst.Endpoints[1:] // checkout-1 leaves west
	start = time.Now()
	if err := west.WriteState(wst); err != nil {
		return "", err
	}
	if err := d.eastSelects(ctx, map[uint16]int{2: backendsPerCluster - 1, 3: backendsPerCluster}); err != nil {
		return "", fmt.Errorf("west's backend change: %w", err)
	}
	remoteProp := time.Since(start)
	if err := west.WriteState(demoState(2)); err != nil {
		return "", err
	}
	if err := d.eastSelects(ctx, map[uint16]int{2: backendsPerCluster, 3: backendsPerCluster}); err != nil {
		return "", fmt.Errorf("west's backend back: %w", err)
	}

	localmesh.SetReady(st, "checkout", true)
	start = time.Now()
	if err := east.WriteState(st); err != nil {
		return "", err
	}
	if err := d.eastSelects(ctx, map[uint16]int{1: backendsPerCluster}); err != nil {
		return "", fmt.Errorf("failing back: %w", err)
	}
	return fmt.Sprintf("failover %s, west's state file → east's service map %s, failback %s",
		ms(failover), ms(remoteProp), ms(time.Since(start))), nil
}

// westEntries counts the ipcache entries of cluster id 2 in an agent.
func westEntries(a *localmesh.Agent) (int, error) {
	ips, err := a.Datapath.IPCache()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ips {
		if e.ClusterID == 2 {
			n++
		}
	}
	return n, nil
}

func (d *run) restartWest(ctx context.Context) (string, error) {
	east, west := d.m.Cluster("east"), d.m.Cluster("west")
	if err := d.waitUntil(ctx, func() (bool, string) {
		for _, a := range east.Agents {
			if n, _ := westEntries(a); n != wantEndpoints {
				return false, fmt.Sprintf("%s holds %d of west's entries before the restart", a.Name, n)
			}
		}
		return true, ""
	}); err != nil {
		return "", err
	}
	// Watch every east agent's datapath for the whole step: west's entries
	// must never drop below what west publishes.
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	minSeen := make(chan int, 1)
	go func() {
		lowest := wantEndpoints
		t := time.NewTicker(500 * time.Microsecond)
		defer t.Stop()
		for watchCtx.Err() == nil {
			for _, a := range east.Agents {
				if n, err := westEntries(a); err == nil && n < lowest {
					lowest = n
				}
			}
			select {
			case <-watchCtx.Done():
			case <-t.C:
			}
		}
		minSeen <- lowest
	}()
	if err := west.StopAPIServer(); err != nil {
		return "", err
	}
	if err := d.waitUntil(ctx, func() (bool, string) {
		for _, a := range east.Agents {
			if r, _ := remote(a.Sync.Status(), "west"); r.Connected {
				return false, a.Name + " still connected to west"
			}
		}
		return true, ""
	}); err != nil {
		return "", err
	}
	restart := time.Now()
	if err := west.StartAPIServer(ctx); err != nil {
		return "", err
	}
	if err := d.waitUntil(ctx, func() (bool, string) {
		for _, a := range east.Agents {
			r, _ := remote(a.Sync.Status(), "west")
			if !r.Ready || r.Endpoints != wantEndpoints {
				return false, fmt.Sprintf("%s: west ready=%v endpoints=%d", a.Name, r.Ready, r.Endpoints)
			}
		}
		return true, ""
	}); err != nil {
		return "", err
	}
	resync := time.Since(restart)
	stopWatch()
	if lowest := <-minSeen; lowest < wantEndpoints {
		return "", fmt.Errorf("east's datapath held only %d of west's %d entries at some point", lowest, wantEndpoints)
	}
	return fmt.Sprintf("west's %d entries stayed in east's datapath throughout; resync %s after west came back",
		wantEndpoints, ms(resync)), nil
}

func (d *run) disconnectNorth(ctx context.Context) (string, error) {
	east := d.m.Cluster("east")
	if err := d.m.Disconnect("east", "north"); err != nil {
		return "", err
	}
	err := d.waitUntil(ctx, func() (bool, string) {
		for _, a := range east.Agents {
			ips, err := a.Datapath.IPCache()
			if err != nil {
				return false, err.Error()
			}
			for p, e := range ips {
				if e.ClusterID == 3 {
					return false, fmt.Sprintf("%s still has north's %s", a.Name, p)
				}
			}
			st := a.Sync.Status()
			if _, ok := remote(st, "north"); ok {
				return false, a.Name + " still lists north"
			}
			for _, s := range st.Services {
				if s.Remote["north"] != 0 {
					return false, a.Name + " still counts north's backends"
				}
			}
		}
		return true, ""
	})
	return "no entry, backend or status line from north left in east", err
}
