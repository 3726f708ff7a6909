package cli

import (
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/demo"
)

func newDemoCmd() *cobra.Command {
	var o demo.Options
	var noEBPF bool
	cmd := &cobra.Command{
		Use:   "demo [--once]",
		Short: "Run a three-cluster mesh on loopback (no Kubernetes needed)",
		Long: `Start three clusters on loopback — east (id 1), west (id 2), north (id 3) —
each a mesh apiserver with certificates from one shared CA plus its agents,
connect every pair, publish the global service shop/checkout (affinity local)
with backends in every cluster, print the status table and keep running until
Ctrl-C. Agents serve their status on unix sockets for 'clustermesh status'.

As root the agents write real pinned eBPF maps; otherwise they use the
in-memory datapath and the demo says so.

--once runs a scripted check instead and exits 0 only if every step held:
 (a) every agent sees every remote ready with the right counts;
 (b) east's checkout backends go unready: east's agents select the remote ones,
     and east's own again once they are back;
 (c) west's apiserver stops: east keeps west's entries; west restarts with an
     empty store and east resyncs without any entry going missing;
 (d) north is disconnected from east: east drains everything from north.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Out = cmd.OutOrStdout()
			o.EBPF = os.Geteuid() == 0 && !noEBPF
			o.PrintStatus = func(w io.Writer, st agentsync.Status) error { return PrintStatus(w, st, false) }
			o.Logger = slog.Default()
			return demo.Run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.Once, "once", false, "run the scripted check and exit (0 only if every step held)")
	f.IntVar(&o.AgentsPerCluster, "agents", 2, "agents (nodes) per cluster")
	f.BoolVar(&noEBPF, "no-ebpf", false, "use the in-memory datapath even as root")
	f.StringVar(&o.Dir, "dir", "", "working directory (default: a temporary one, removed on exit)")
	return cmd
}
