package cli

import (
	"errors"
	"fmt"
	"io"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clustermesh/clustermesh/flowmap"
	"github.com/clustermesh/clustermesh/hubbleflags"
)

const observeMapLong = `Print the service map of a window of flows: every edge between workloads
(a pod without a workload: the pod; world, remote-node and host peers as
such), with its destination port and protocol, its flows by verdict, its rate
and its share of drops, and the global services flows were sent to with the
clusters that served them. The same map clustermesh ui draws, as data.

The window is the last --window (default 5m), or --since [--until]. Filter
flags are observe's (hubble observe's): they select the flows the map is
built from. The server and its TLS flags are observe's.

-o json is one document: {"edges":[{"source":"west/shop/frontend",
"destination":"east/shop/checkout","port":8080,"protocol":"TCP","flows":12,
"verdicts":{"DROPPED":12},"dropShare":1,...}],"nodes":[...],"services":[...]}.
-o dot is a Graphviz digraph, a subgraph per cluster and namespace, dropped
edges red (dot -Tsvg).`

const observeMapExample = `  # The edges of the last 5 minutes of the whole mesh, through the relay
  clustermesh observe map --server 127.0.0.1:4245 -o json

  # A CI drift check: every edge that is not in the allowlist
  clustermesh observe map --server 127.0.0.1:4245 --window 1h -o json \
    | jq -r '.edges[] | "\(.source) -> \(.destination) \(.port)/\(.protocol)"' | grep -vxFf allowed-edges.txt

  # Namespace shop as a picture
  clustermesh observe map --server 127.0.0.1:4245 --namespace shop -o dot | dot -Tsvg > shop.svg`

// observeMapOptions are observe map's flags.
type observeMapOptions struct {
	observeOptions
	window       time.Duration
	since, until string
	now          func() time.Time
}

func newObserveMapCmd() *cobra.Command {
	o := &observeMapOptions{observeOptions: observeOptions{sel: hubbleflags.New()}, now: time.Now}
	cmd := &cobra.Command{
		Use:     "map [--server ADDR] [filters] [--window D | --since T [--until T]] -o json|dot",
		Short:   "Print the service map (workloads, edges by port and verdict, services) of a window of flows",
		Long:    observeMapLong,
		Example: observeMapExample,
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return o.run(cmd) },
	}
	f := cmd.Flags()
	f.SortFlags = false
	o.sel.RegisterFilters(f)
	f.DurationVar(&o.window, "window", flowmap.DefaultWindow, "the map of the flows of this last duration")
	f.StringVar(&o.since, "since", "", "the map of the flows since this time (RFC 3339, or a duration ago: 10m) instead of --window")
	f.StringVar(&o.until, "until", "", "with --since: up to this time (default now)")
	o.registerServer(f, "the Observer API: unix:///PATH (an agent's socket), host:port, or tls://host:port (the relay: the whole mesh)")
	f.StringVarP(&o.output, "output", "o", "json", "output: json or dot")
	hubbleflags.SingleUse(f, "server", "window", "since", "until", "output", "timeout")
	return cmd
}

func (o *observeMapOptions) run(cmd *cobra.Command) error {
	write, err := mapWriter(o.output)
	if err != nil {
		return err
	}
	req, end, err := o.request()
	if err != nil {
		return err
	}
	m := flowmap.New(flowmap.Config{Window: end.Sub(req.GetSince().AsTime())})
	stream, closeConn, err := o.getFlows(cmd.Context(), req)
	if err != nil {
		return err
	}
	defer closeConn()
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if cmd.Context().Err() != nil || status.Code(err) == codes.Canceled {
				return cmd.Context().Err()
			}
			return o.explain(err)
		}
		m.AddResponse(r)
	}
	return write(cmd.OutOrStdout(), m.Snapshot(end, flowmap.Query{}))
}

// request is the GetFlows request of the window and filters, and the
// window's end.
func (o *observeMapOptions) request() (*observerpb.GetFlowsRequest, time.Time, error) {
	wl, bl, err := o.sel.Filters()
	if err != nil {
		return nil, time.Time{}, err
	}
	now := o.now()
	end, start := now, now.Add(-o.window)
	if o.until != "" && o.since == "" {
		return nil, time.Time{}, errors.New("--until needs --since")
	}
	if o.since != "" {
		if start, err = hubbleflags.ParseTime(o.since, now); err != nil {
			return nil, time.Time{}, fmt.Errorf("--since: %w", err)
		}
	}
	if o.until != "" {
		if end, err = hubbleflags.ParseTime(o.until, now); err != nil {
			return nil, time.Time{}, fmt.Errorf("--until: %w", err)
		}
	}
	if !start.Before(end) {
		return nil, time.Time{}, fmt.Errorf("the window is empty: %s is not before %s", start.Format(time.RFC3339), end.Format(time.RFC3339))
	}
	req := &observerpb.GetFlowsRequest{Since: timestamppb.New(start), Whitelist: wl, Blacklist: bl}
	if o.until != "" {
		req.Until = timestamppb.New(end)
	}
	return req, end, nil
}

// mapWriter is how -o writes a snapshot.
func mapWriter(output string) (func(io.Writer, flowmap.Snapshot) error, error) {
	switch output {
	case "json", "JSON":
		return flowmap.WriteJSON, nil
	case "dot":
		return flowmap.WriteDOT, nil
	}
	return nil, fmt.Errorf("-o %q: want json or dot", output)
}
