// Package demo is `clustermesh demo`: three clusters (east 1, west 2,
// north 3) on loopback, each a mesh apiserver from one shared CA plus its
// agents, every pair connected, sharing the global service shop/checkout.
// As root it also sends real traffic (network.go, traffic.go): an HTTP
// server in a network namespace per checkout pod, and a client behind
// east-node-1's socket load balancer that calls the service's ClusterIP
// while east's backends fail over and back. With Once it runs a scripted
// check of the mesh's promises and reports each step with its time.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/localmesh"
	"github.com/clustermesh/clustermesh/node"
)

// Options of the demo.
type Options struct {
	Out              io.Writer
	Once             bool // run the scripted check and return
	AgentsPerCluster int  // default 2
	EBPF             bool // real pinned eBPF maps (needs root)
	// Traffic shows real traffic (needs root and EBPF): an HTTP server in a
	// network namespace per checkout pod, east-node-1's socket load
	// balancer attached to a cgroup of the demo's own, and a client in it
	// that calls the service's ClusterIP while east's backends go unready
	// and come back. Without root or EBPF the demo says why it skips it.
	Traffic bool
	Dir     string
	// StepTimeout bounds each scripted step.
	StepTimeout time.Duration
	Logger      *slog.Logger

	// tweak adjusts the mesh's apiservers and agents (tests only).
	tweak localmesh.Options
}

// Clusters of the demo, in order: the index+1 is the cluster id.
var Clusters = []string{"east", "west", "north"}

// ErrCheckFailed is returned by Run with Once when a step did not hold.
var ErrCheckFailed = errors.New("demo: a scripted step failed")

// Run starts the mesh and either runs the scripted check (Once) or shows
// the real traffic, prints the status and serves until ctx is done.
func Run(ctx context.Context, o Options) error {
	d, err := start(ctx, o)
	if err != nil {
		return err
	}
	defer d.close()
	o = d.o
	ok := d.step(ctx, "(a) every agent sees every remote cluster ready with the right counts", d.allReady)
	fmt.Fprintf(o.Out, "      mesh up and fully synced %s after start\n", ms(time.Since(d.started)))
	const trafficStep = "(b) a client behind east-node-1's socket LB calls 10.96.0.10:80: east serves; east unready → west+north; back → east"
	if d.noTraffic != "" {
		fmt.Fprintf(o.Out, "skip %s [%s]\n", trafficStep, d.noTrafficShort)
	} else if ctx.Err() == nil {
		ok = d.step(ctx, trafficStep, d.traffic) && ok
	}
	const policyStep = "(c) policy: east's checkout accepts only frontends of east and west: west's connects, north's is dropped"
	if ctx.Err() == nil {
		ok = d.step(ctx, policyStep, d.policyStep) && ok
	}
	const observeStep = "(c2) observe: a relay of the whole mesh serves the flows every cluster's agent saw (hubble observe works on it)"
	if d.noTraffic != "" {
		fmt.Fprintf(o.Out, "skip %s [%s]\n", observeStep, d.noTrafficShort)
	} else if ctx.Err() == nil {
		ok = d.step(ctx, observeStep, d.observeStep) && ok
	}
	const l7Step = "(c3) L7: east's checkout allows GET " + cartPath + " from west's and north's frontends, POST gets 403; east's frontend asks a DNS server in a pod: *.shop.example only, toFQDNs " + apiName
	switch {
	case !o.EBPF:
		fmt.Fprintf(o.Out, "skip %s [in-memory datapath: no L7 proxy]\n", l7Step)
	case d.noTraffic != "":
		fmt.Fprintf(o.Out, "skip %s [%s]\n", l7Step, d.noTrafficShort)
	case ctx.Err() == nil:
		ok = d.step(ctx, l7Step, d.l7Step) && ok
	}
	if !o.Once {
		if ctx.Err() != nil {
			return nil
		}
		return d.serve(ctx)
	}
	for _, s := range []struct {
		name string
		fn   func(context.Context) (string, error)
	}{
		{"(d) east's checkout backends unready → east's agents select remote backends; back → local again", d.failover},
		{"(e) west's apiserver stops: east keeps west's entries; west restarts: east resyncs, no entry missing", d.restartWest},
		{"(f) north disconnected from east: east drains everything from north", d.disconnectNorth},
	} {
		if ctx.Err() != nil {
			fmt.Fprintln(o.Out, "interrupted: the remaining steps did not run")
			return fmt.Errorf("demo: interrupted: %w", ctx.Err())
		}
		ok = d.step(ctx, s.name, s.fn) && ok
	}
	if !ok {
		return ErrCheckFailed
	}
	fmt.Fprintln(o.Out, "all steps held")
	return nil
}

// start prints what the demo runs and starts the mesh; close stops it.
func start(ctx context.Context, o Options) (*run, error) {
	if o.AgentsPerCluster == 0 {
		o.AgentsPerCluster = 2
	}
	if o.StepTimeout == 0 {
		o.StepTimeout = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	d := &run{o: o}
	if o.Dir == "" {
		dir, err := os.MkdirTemp("", "clustermesh-demo-")
		if err != nil {
			return nil, err
		}
		d.o.Dir, d.tmpDir = dir, dir
	}
	d.describe()
	var specs []localmesh.ClusterSpec
	for i, n := range Clusters {
		specs = append(specs, localmesh.ClusterSpec{Name: n, ID: uint32(i + 1), State: demoState(i + 1)})
	}
	pdir, err := writePolicy(d.o.Dir)
	if err != nil {
		d.close()
		return nil, err
	}
	// With real traffic, every agent observes its node's pods and
	// serves Hubble's API; node agents serve their status as `clustermesh
	// agent` does, when the demo serves.
	observing := d.noTraffic == ""
	if observing {
		// The client's cgroup, where east-node-1's agent attaches its socket
		// load balancer (its translations are flows too).
		cg, err := newCgroup()
		if err != nil {
			d.close()
			return nil, err
		}
		d.cgroup = cg
		// The pods' namespaces come first: the node agents' L7 proxies
		// listen in east-node-1's namespace from their start.
		if err := d.setupNetwork(ctx); err != nil {
			d.close()
			return nil, err
		}
	}
	d.started = time.Now()
	m, err := localmesh.Start(ctx, localmesh.Options{Dir: d.o.Dir, Clusters: specs, AgentsPerCluster: o.AgentsPerCluster,
		EBPF: o.EBPF, ProbeInterval: 100 * time.Millisecond, Logger: o.Logger, ReadOwnCluster: true, Hubble: observing,
		APIServer: o.tweak.APIServer, Agent: o.tweak.Agent, Node: d.pol.nodeAgent(pdir, d.cgroup, !o.Once, d.statusSocket)})
	if err != nil {
		d.close()
		return nil, err
	}
	d.m = m
	return d, nil
}

// describe prints what the demo runs, and notes why real traffic is off
// when it is.
func (d *run) describe() {
	o := d.o
	root := os.Geteuid() == 0
	dp := "eBPF maps pinned under /sys/fs/bpf/clustermesh-localmesh"
	switch {
	case !o.EBPF && root:
		dp = "in-memory datapath (--no-ebpf)"
	case !o.EBPF:
		dp = "in-memory datapath (not root: eBPF maps skipped)"
	}
	switch {
	case !o.Traffic:
		d.noTraffic, d.noTrafficShort = "real traffic off (--no-traffic); the service maps are checked instead", "--no-traffic"
	case !root:
		d.noTraffic = "not root: no network namespaces, no real traffic; the service maps are checked instead"
		d.noTrafficShort = "not root"
	case !o.EBPF:
		d.noTraffic = "in-memory datapath: no socket load balancer, no real traffic; the service maps are checked instead"
		d.noTrafficShort = "in-memory datapath"
	}
	fmt.Fprintf(o.Out, "clustermesh demo: 3 clusters × (1 apiserver + %d agents) on loopback, %s\n", o.AgentsPerCluster, dp)
	if d.noTraffic != "" {
		fmt.Fprintf(o.Out, "      %s\n", d.noTraffic)
	} else {
		fmt.Fprintln(o.Out, "      real traffic: an HTTP server in a network namespace per checkout pod, a client behind east-node-1's socket load balancer,\n"+
			"      a DNS server (shop.example) in east's checkout-2, L7 proxies in the agents")
	}
}

// statusSocket is where agent serves its status while the demo serves.
func (d *run) statusSocket(agent string) string {
	return filepath.Join(d.o.Dir, "status", agent+".sock")
}

// close stops the mesh, removes the traffic's network and removes the
// temporary directory.
func (d *run) close() error {
	var errs []error
	if d.stopRelay != nil {
		errs = append(errs, d.stopRelay())
	}
	if d.m != nil {
		// First: east-node-1's enforcer stops before its namespace goes.
		errs = append(errs, d.m.Close())
	}
	if d.net != nil {
		errs = append(errs, d.net.Close())
	}
	if d.cgroup != "" {
		// After the agents: east-node-1's detached its socket load balancer.
		errs = append(errs, removeCgroup(d.cgroup, 5*time.Second))
	}
	if d.tmpDir != "" {
		errs = append(errs, os.RemoveAll(d.tmpDir))
	}
	err := errors.Join(errs...)
	if err != nil {
		fmt.Fprintf(d.o.Out, "cleanup: %v\n", err)
	}
	return err
}

// run is one demo run.
type run struct {
	o         Options
	m         *localmesh.Mesh
	started   time.Time
	tmpDir    string // removed by close
	noTraffic string // why the real traffic is skipped, or ""
	// noTrafficShort is the reason in a few words.
	noTrafficShort string
	net            *network      // the real traffic's network, once set up
	netSetup       time.Duration // how long setting it up took
	pol            policyRun
	stopRelay      func() error // stops the relay, once started
	cgroup         string       // the client's cgroup (real traffic), removed by close
}

// step runs fn with the step timeout and prints its outcome and time.
func (d *run) step(ctx context.Context, name string, fn func(context.Context) (string, error)) bool {
	ctx, cancel := context.WithTimeout(ctx, d.o.StepTimeout)
	defer cancel()
	start := time.Now()
	detail, err := fn(ctx)
	took := ms(time.Since(start))
	if err != nil {
		fmt.Fprintf(d.o.Out, "FAIL %s [%s]\n     %v\n", name, took, err)
		return false
	}
	fmt.Fprintf(d.o.Out, "ok   %s [%s]\n", name, took)
	if detail != "" {
		fmt.Fprintf(d.o.Out, "      %s\n", detail)
	}
	return true
}

// serve prints east's status, serves every agent's status on a unix socket
// and waits for ctx.
func (d *run) serve(ctx context.Context) error {
	east := d.m.Cluster("east").Agents[0]
	fmt.Fprintf(d.o.Out, "\nstatus of agent %s:\n\n", east.Name)
	node.PrintStatus(d.o.Out, east.Node.Status(), false)
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, c := range d.m.Clusters {
		for _, a := range c.Agents {
			if a.Node != nil {
				continue // it serves its own
			}
			wg.Go(func() {
				status := func() any { return a.Sync.Status() }
				if err := node.ServeStatus(ctx, d.statusSocket(a.Name), status, nil); err != nil {
					d.o.Logger.Warn("demo: status socket", "agent", a.Name, "err", err)
				}
			})
		}
	}
	sockDir := filepath.Dir(d.statusSocket(east.Name))
	fmt.Fprintf(d.o.Out, "\nagents serve their status in %s; for example:\n  clustermesh status --agent %s\n",
		sockDir, filepath.Join(sockDir, "west-node-1.sock"))
	d.printObserve()
	if d.stopRelay != nil {
		ln, err := d.listenMap()
		if err != nil {
			return err
		}
		wg.Go(func() {
			if err := d.serveMap(ctx, ln); err != nil && ctx.Err() == nil {
				d.o.Logger.Warn("demo: the map", "err", err)
			}
		})
	}
	if d.net != nil {
		nodeNS := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(d.net.node.NS))
		fmt.Fprintf(d.o.Out, "\nthe pods answer in east-node-1's network namespace, %s; through its socket load balancer\n"+
			"for the processes of %s:\n"+
			"  nsenter --net=%s curl -s http://%s:%d/\n"+
			"  nsenter --net=%s sh -c 'echo $$ > %s/cgroup.procs && exec curl -s %s'\n",
			nodeNS, d.net.cgroup, nodeNS, d.net.pods[0].IP, d.net.port, nodeNS, d.net.cgroup, serviceURL())
		if fe := d.net.frontends["west"]; fe != nil {
			feNS := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(fe.NS))
			fmt.Fprintf(d.o.Out, "west's frontend through east-node-1's L7 proxy (GET %s answered, anything else 403):\n"+
				"  nsenter --net=%s curl -s -X POST http://%s:%d%s\n", cartPath, feNS, dnsServer.Addr(), d.net.port, cartPath)
		}
	}
	fmt.Fprintln(d.o.Out, "\nrunning until Ctrl-C")
	<-ctx.Done()
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
