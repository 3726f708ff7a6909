package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/node"
	"github.com/clustermesh/clustermesh/observe"
)

// filterFlagHelp documents each filter flag (observe.FilterKeys).
var filterFlagHelp = map[string]string{
	"verdict":      "only flows with this verdict: FORWARDED or DROPPED",
	"from-cluster": "only flows whose source is in this cluster",
	"to-cluster":   "only flows whose destination is in this cluster",
	"from-pod":     "only flows from this pod: POD (any namespace) or NAMESPACE/POD; the name matches as a prefix",
	"to-pod":       "only flows to this pod: POD (any namespace) or NAMESPACE/POD; the name matches as a prefix",
	"namespace":    "only flows with either end in this namespace",
	"protocol":     "only flows of this protocol: TCP, UDP, SCTP, ICMP or ICMPv6",
	"identity":     "only flows with either end of this numeric security identity",
}

const observeLong = `Show the flows the node's policy programs report, named by cluster, namespace,
pod and security identity: every dropped packet, and forwarded packets as the
agent samples them (one in the sample rate, and the first of each connection).

Without --follow it prints the last --last flows the agent keeps (it keeps the
last 4096) and exits; with --follow it goes on printing new flows until
Ctrl-C. Filters are ANDed. A line "EVENTS LOST: N" marks where N events are
missing: the datapath's ring buffer was full, or this client read too slowly
and the agent dropped them for it alone (it never slows down for a client).

The agent serves the flows on its status address (--status-addr of
clustermesh agent, a unix socket by default).

Compact output, one line per flow (time, source -> destination with their
identities, drop reason, verdict, protocol; a reply is shown as
destination <- source):

  Nov 21 03:00:00.123: west/shop/frontend-1:41234 (ID:132000) -> east/shop/checkout-0:8080 (ID:70001) policy-denied DROPPED (TCP)

-o json prints one JSON object per line: {"flow": {...}} or
{"lost_events": {"source": "datapath"|"subscriber", "num_events_lost": N}}
(fields in docs/observe.md).`

const observeExample = `  # The last 20 flows the agent on this node keeps
  clustermesh observe

  # Follow the drops of traffic from west to the pods of namespace shop
  clustermesh observe -f --verdict DROPPED --from-cluster west --namespace shop

  # Everything sent to east's checkout pods, as JSON
  clustermesh observe --to-pod shop/checkout --to-cluster east -o json --last 100

  # Another agent's status address
  clustermesh observe --agent 127.0.0.1:9965 --protocol udp`

func newObserveCmd() *cobra.Command {
	o := observeFlags{filters: map[string]*string{}}
	cmd := &cobra.Command{
		Use:     "observe [--agent ADDR] [filters] [-f] [--last N] [-o compact|json]",
		Short:   "Show the flows an agent's policy datapath reports, like hubble observe",
		Long:    observeLong,
		Example: observeExample,
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return o.run(cmd) },
	}
	f := cmd.Flags()
	f.StringVar(&o.addr, "agent", node.DefaultStatusAddr, "the agent's status address (unix socket path or host:port)")
	for _, k := range observe.FilterKeys {
		o.filters[k] = f.String(k, "", filterFlagHelp[k])
	}
	f.BoolVarP(&o.follow, "follow", "f", false, "after the last flows, print new flows as they come until Ctrl-C")
	f.IntVar(&o.last, "last", observe.DefaultLast, "print the last N flows the agent keeps first (-1: all of them)")
	f.StringVarP(&o.output, "output", "o", "compact", "output format: compact or json")
	return cmd
}

// observeFlags are observe's flags; filters holds each filter flag's value.
type observeFlags struct {
	addr, output string
	last         int
	follow       bool
	filters      map[string]*string
}

func (o *observeFlags) run(cmd *cobra.Command) error {
	if o.output != "compact" && o.output != "json" {
		return fmt.Errorf("-o %q: want compact or json", o.output)
	}
	if o.last < -1 {
		return fmt.Errorf("--last %d: want a number of flows, or -1 for every flow the agent keeps", o.last)
	}
	var f observe.Filter
	for _, k := range observe.FilterKeys {
		if !cmd.Flags().Changed(k) {
			continue
		}
		if err := f.Set(k, *o.filters[k]); err != nil {
			return fmt.Errorf("--%s%s", k, strings.TrimPrefix(strings.TrimPrefix(err.Error(), "observe: "), k))
		}
	}
	out := cmd.OutOrStdout()
	emit := func(ev observe.Event) error { return observe.WriteCompact(out, ev) }
	if o.output == "json" {
		enc := json.NewEncoder(out)
		emit = func(ev observe.Event) error { return enc.Encode(ev) }
	}
	ctx := cmd.Context()
	err := observe.Observe(ctx, o.addr, f, o.last, o.follow, emit)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return nil // Ctrl-C while following
	case errors.Is(err, observe.ErrNotServed):
		return fmt.Errorf("%w: upgrade the agent, and run it with the eBPF datapath (flows come from its policy programs)", err)
	case errors.Is(err, observe.ErrUnreachable):
		return fmt.Errorf("%w\nis `clustermesh agent` running on this node? Point --agent at its --status-addr (default %s)",
			err, node.DefaultStatusAddr)
	}
	return err
}
