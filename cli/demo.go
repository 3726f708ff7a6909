package cli

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/demo"
)

func newDemoCmd() *cobra.Command {
	var o demo.Options
	var noEBPF, noTraffic bool
	cmd := &cobra.Command{
		Use:   "demo [--once]",
		Short: "Run a three-cluster mesh on loopback (no Kubernetes needed)",
		Long: `Start three clusters on loopback — east (id 1), west (id 2), north (id 3) —
each a mesh apiserver with certificates from one shared CA plus its agents,
connect every pair, publish the global service shop/checkout (affinity local)
with backends in every cluster, print the status table and keep running until
Ctrl-C. Agents serve their status on unix sockets for 'clustermesh status'.

As root the agents write real pinned eBPF maps, and the demo sends real
traffic: every checkout pod is a network namespace with an HTTP server on
port 8080 that answers with its cluster and pod name, east-node-1 is a
namespace with a veth and a route to each pod, and east-node-1's socket load
balancer is attached to a cgroup of the demo's own. A client in that cgroup
calls http://10.96.0.10:80 and the demo prints who served it, before east's
backends go unready, while they are, and after they are back. Everything is
removed on exit. Without root the agents use the in-memory datapath, and the
demo says what it skips.

--once runs a scripted check instead and exits 0 only if every step held:
 (a) every agent sees every remote ready with the right counts;
 (b) real traffic (root): the client's requests are all served by east, then
     all by west and north while east's backends are unready, then all by
     east again;
 (c) policy: east's checkout accepts only frontends of east and west; west's
     frontend connects, north's is dropped, and the flows say so (as root,
     on real packets; otherwise the computed policy map is checked);
 (c2) observe (root): a relay of the whole mesh serves every cluster's flows;
 (c3) L7 (root): east's checkout policy gets an HTTP rule: GET /v1/cart from
     west's and north's frontends is answered, a POST gets 403 and the
     connection stays usable; east's frontend asks a DNS server in
     checkout-2's namespace under a DNS rule (*.shop.example answered, other
     names REFUSED) and a toFQDNs rule lets it reach the answered address;
     the demo prints the L7 flows read through the relay (skipped on the
     in-memory datapath: it has no L7 proxy);
 (d) east's checkout backends go unready: east's agents select the remote ones,
     and east's own again once they are back;
 (e) west's apiserver stops: east keeps west's entries; west restarts with an
     empty store and east resyncs without any entry going missing;
 (f) north is disconnected from east: east drains everything from north.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Out = cmd.OutOrStdout()
			o.EBPF = os.Geteuid() == 0 && !noEBPF
			o.Traffic = !noTraffic
			o.Logger = slog.Default()
			return demo.Run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.Once, "once", false, "run the scripted check and exit (0 only if every step held)")
	f.IntVar(&o.AgentsPerCluster, "agents", 2, "agents (nodes) per cluster")
	f.BoolVar(&noEBPF, "no-ebpf", false, "use the in-memory datapath even as root (no real traffic either)")
	f.BoolVar(&noTraffic, "no-traffic", false, "no network namespaces and no real traffic, even as root")
	f.StringVar(&o.Dir, "dir", "", "working directory (default: a temporary one, removed on exit)")
	cmd.AddCommand(newDemoClientCmd())
	return cmd
}

// newDemoClientCmd is the demo's client, which the demo runs as a child
// process in east-node-1's namespace and cgroup.
func newDemoClientCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "client URL N",
		Short:  "The demo's client: N GET requests to URL, then who served them as JSON",
		Hidden: true,
		Args:   cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[1])
			if err != nil || n < 0 {
				return fmt.Errorf("demo client: N must be a count, not %q", args[1])
			}
			return demo.RunClient(cmd.Context(), cmd.OutOrStdout(), args[0], n)
		},
	}
}
