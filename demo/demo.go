// Package demo is `clustermesh demo`: three clusters (east 1, west 2,
// north 3) on loopback, each a mesh apiserver from one shared CA plus its
// agents, every pair connected, sharing the global service shop/checkout.
// With Once it runs a scripted check of the mesh's promises and reports
// each step with its time.
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

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/localmesh"
)

// Options of the demo.
type Options struct {
	Out              io.Writer
	Once             bool // run the scripted check and return
	AgentsPerCluster int  // default 2
	EBPF             bool // real pinned eBPF maps (needs root)
	Dir              string
	// StepTimeout bounds each scripted step.
	StepTimeout time.Duration
	PrintStatus func(io.Writer, agentsync.Status) error
	Logger      *slog.Logger
}

// Clusters of the demo, in order: the index+1 is the cluster id.
var Clusters = []string{"east", "west", "north"}

// ErrCheckFailed is returned by Run with Once when a step did not hold.
var ErrCheckFailed = errors.New("demo: a scripted step failed")

// Run starts the mesh and either runs the scripted check (Once) or prints
// the status and serves until ctx is done.
func Run(ctx context.Context, o Options) error {
	if o.AgentsPerCluster == 0 {
		o.AgentsPerCluster = 2
	}
	if o.StepTimeout == 0 {
		o.StepTimeout = 30 * time.Second
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "clustermesh-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	dp := "in-memory datapath (not root: eBPF maps skipped)"
	if o.EBPF {
		dp = "eBPF maps pinned under /sys/fs/bpf/clustermesh-localmesh"
	}
	fmt.Fprintf(o.Out, "clustermesh demo: 3 clusters × (1 apiserver + %d agents) on loopback, %s\n", o.AgentsPerCluster, dp)
	var specs []localmesh.ClusterSpec
	for i, n := range Clusters {
		specs = append(specs, localmesh.ClusterSpec{Name: n, ID: uint32(i + 1), State: localmesh.SampleState(i + 1)})
	}
	start := time.Now()
	m, err := localmesh.Start(ctx, localmesh.Options{Dir: o.Dir, Clusters: specs, AgentsPerCluster: o.AgentsPerCluster,
		EBPF: o.EBPF, ProbeInterval: 100 * time.Millisecond, Logger: o.Logger})
	if err != nil {
		return err
	}
	defer m.Close()
	d := &run{o: o, m: m}
	ok := d.step(ctx, "(a) every agent sees every remote cluster ready with the right counts", d.allReady)
	fmt.Fprintf(o.Out, "      mesh up and fully synced %s after start\n", ms(time.Since(start)))
	if !o.Once {
		return d.serve(ctx)
	}
	ok = d.step(ctx, "(b) east's checkout backends unready → east's agents select remote backends; back → local again", d.failover) && ok
	ok = d.step(ctx, "(c) west's apiserver stops: east keeps west's entries; west restarts: east resyncs, no entry missing", d.restartWest) && ok
	ok = d.step(ctx, "(d) north disconnected from east: east drains everything from north", d.disconnectNorth) && ok
	if !ok {
		return ErrCheckFailed
	}
	fmt.Fprintln(o.Out, "all steps held")
	return nil
}

// run is one demo run.
type run struct {
	o Options
	m *localmesh.Mesh
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
	if d.o.PrintStatus != nil {
		d.o.PrintStatus(d.o.Out, east.Sync.Status())
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	sockDir := filepath.Join(d.o.Dir, "status")
	for _, c := range d.m.Clusters {
		for _, a := range c.Agents {
			sock := filepath.Join(sockDir, a.Name+".sock")
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := agentsync.ServeStatus(ctx, sock, a.Sync.Status); err != nil {
					slog.Warn("demo: status socket", "agent", a.Name, "err", err)
				}
			}()
		}
	}
	fmt.Fprintf(d.o.Out, "\nagents serve their status in %s; for example:\n  clustermesh status --agent %s\n\nrunning until Ctrl-C\n",
		sockDir, filepath.Join(sockDir, "west-node-1.sock"))
	<-ctx.Done()
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
