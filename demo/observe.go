package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"

	"github.com/clustermesh/clustermesh/enforcer"
	"github.com/clustermesh/clustermesh/observe"
	"github.com/clustermesh/clustermesh/ui"
)

// The demo's observability: with eBPF and real traffic, every agent is a
// node agent observing its node's pods (Hubble's Observer API on a unix socket
// and an mTLS loopback port, localmesh.Options.Hubble), and a relay of the
// whole mesh, which finds them through east-node-1's peer service, serves
// them on one unix socket for hubble and clustermesh observe.

// relaySocket is where the demo's relay serves.
func (d *run) relaySocket() string { return filepath.Join(d.o.Dir, "hubble-relay.sock") }

// startRelay starts the relay; close stops it.
func (d *run) startRelay(ctx context.Context) error {
	stop, err := d.m.StartRelay(ctx, "east", d.relaySocket())
	if err != nil {
		return err
	}
	d.stopRelay = stop
	return nil
}

// observeStep checks that flows reported by an agent of every cluster
// arrive through the relay.
func (d *run) observeStep(ctx context.Context) (string, error) {
	if d.stopRelay == nil {
		if err := d.startRelay(ctx); err != nil {
			return "", err
		}
	}
	if err := d.frontendsObserved(ctx); err != nil {
		return "", err
	}
	conn, err := observe.Dial(ctx, "unix://"+d.relaySocket(), nil)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	c := observerpb.NewObserverClient(conn)
	var byNode map[string][]*flowpb.Flow
	err = d.waitUntil(ctx, func() (bool, string) {
		byNode, err = lastFlowsByNode(ctx, c)
		if err != nil {
			return false, err.Error()
		}
		for _, n := range Clusters {
			if len(byNode[n+"/node-1"]) == 0 {
				return false, fmt.Sprintf("flows through the relay by node: %s", nodeCounts(byNode))
			}
		}
		if translated(byNode["east/node-1"]) == nil {
			return false, "no socket load balancer translation of east-node-1's client yet"
		}
		return true, ""
	})
	if err != nil {
		return "", err
	}
	example := observe.Compact(byNode["west/node-1"][len(byNode["west/node-1"])-1])
	xlate := translated(byNode["east/node-1"])
	return fmt.Sprintf("through the relay, flows by the node that saw them: %s\n      e.g. %s\n      and east-node-1's socket load balancer: %s (service %s/%s)",
		nodeCounts(byNode), example, observe.Compact(xlate), xlate.GetDestinationService().GetNamespace(), xlate.GetDestinationService().GetName()), nil
}

// translated returns the last socket translation of fs to a named
// service, or nil.
func translated(fs []*flowpb.Flow) *flowpb.Flow {
	for i := len(fs) - 1; i >= 0; i-- {
		if fs[i].GetVerdict() == flowpb.Verdict_TRANSLATED && fs[i].GetDestinationService().GetName() != "" {
			return fs[i]
		}
	}
	return nil
}

// frontendsObserved waits until the node-1 agents of west and north
// observe their frontend, and has each call east's checkout-2 (north's
// call is dropped by east's policy): flows for their agents to report.
func (d *run) frontendsObserved(ctx context.Context) error {
	for _, c := range []string{"west", "north"} {
		enf := d.m.Cluster(c).Agents[0].Node.Enforcer()
		err := d.waitUntil(ctx, func() (bool, string) {
			for _, ep := range enf.Status().Endpoints {
				if ep.Pod == "frontend-1" && ep.State == enforcer.StateEnforcing {
					return true, ""
				}
			}
			return false, c + "-node-1 does not observe its frontend-1 yet"
		})
		if err != nil {
			return err
		}
	}
	to := netip.AddrPortFrom(netip.MustParseAddr("10.1.1.12"), d.net.port)
	if _, err := httpGet(d.net.frontends["west"], to, 3*time.Second); err != nil {
		return fmt.Errorf("west frontend → %s: %w, want allowed", to, err)
	}
	httpGet(d.net.frontends["north"], to, 300*time.Millisecond) // dropped by east's policy
	return nil
}

// lastFlowsByNode asks the relay for the last 1,000 flows and groups them
// by node.
func lastFlowsByNode(ctx context.Context, c observerpb.ObserverClient) (map[string][]*flowpb.Flow, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	stream, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Number: 1000})
	if err != nil {
		return nil, fmt.Errorf("asking the relay for flows: %w", err)
	}
	out := map[string][]*flowpb.Flow{}
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading flows from the relay: %w", err)
		}
		if f := r.GetFlow(); f != nil {
			out[f.GetNodeName()] = append(out[f.GetNodeName()], f)
		}
	}
}

func nodeCounts(byNode map[string][]*flowpb.Flow) string {
	var parts []string
	for n, fs := range byNode {
		parts = append(parts, fmt.Sprintf("%s %d", n, len(fs)))
	}
	slices.Sort(parts)
	if len(parts) == 0 {
		return "none yet"
	}
	return strings.Join(parts, ", ")
}

// listenMap listens for the mesh's map (clustermesh ui on the relay) on a
// loopback port and prints its address; serveMap serves it there.
func (d *run) listenMap() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening for the map: %w", err)
	}
	fmt.Fprintf(d.o.Out, "the mesh's live map in a browser (clustermesh ui on the relay):\n  http://%s/\n", ln.Addr())
	return ln, nil
}

// serveMap serves the map on ln from the relay's flows until ctx is done.
func (d *run) serveMap(ctx context.Context, ln net.Listener) error {
	conn, err := observe.Dial(ctx, "unix://"+d.relaySocket(), nil)
	if err != nil {
		ln.Close()
		return err
	}
	defer conn.Close()
	return ui.New(ui.Config{Client: observerpb.NewObserverClient(conn), Logger: d.o.Logger}).Run(ctx, ln)
}

// printObserve prints how to watch the mesh's flows while the demo serves.
func (d *run) printObserve() {
	if d.stopRelay == nil {
		return
	}
	east := d.m.Cluster("east").Agents[0]
	fmt.Fprintf(d.o.Out, "\nthe whole mesh's flows, through the relay (every agent observes its node's pods):\n"+
		"  hubble observe --server unix://%s -f\n"+
		"  clustermesh observe --server unix://%s -f --verdict DROPPED\n"+
		"  hubble observe --server unix://%s --type l7 --last 20   (the L7 step's HTTP and DNS flows)\n"+
		"one agent's flows, and its Hubble metrics:\n"+
		"  clustermesh observe --server unix://%s --last 20\n", d.relaySocket(), d.relaySocket(), d.relaySocket(), east.HubbleSocket)
	if east.MetricsAddress != "" {
		fmt.Fprintf(d.o.Out, "  curl -s http://%s/metrics | grep ^hubble_   (hubble_http_*, hubble_dns_*: the L7 step's)\n", east.MetricsAddress)
	}
}
