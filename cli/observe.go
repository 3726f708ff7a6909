package cli

// A minimal observe, until Hubble's filter flags land (package hubbleflags).

import (
	"context"
	"errors"
	"fmt"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/clustermesh/clustermesh/node"
	"github.com/clustermesh/clustermesh/observe"
)

func newObserveCmd() *cobra.Command {
	var server, output string
	var last uint64
	var follow bool
	cmd := &cobra.Command{
		Use:   "observe [--server unix:///PATH] [-f] [--last N] [-o compact|json]",
		Short: "Show the flows an agent or a relay serves with Hubble's Observer API, like hubble observe",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "compact" && output != "json" {
				return fmt.Errorf("-o %q: want compact or json", output)
			}
			conn, err := grpc.NewClient(server, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return fmt.Errorf("connecting to %s: %w", server, err)
			}
			defer conn.Close()
			ctx := cmd.Context()
			stream, err := observerpb.NewObserverClient(conn).GetFlows(ctx, &observerpb.GetFlowsRequest{Number: last, Follow: follow})
			if err != nil {
				return fmt.Errorf("requesting flows from %s: %w", server, err)
			}
			out := cmd.OutOrStdout()
			for {
				r, err := stream.Recv()
				if err != nil {
					if errors.Is(err, context.Canceled) || ctx.Err() != nil || err.Error() == "EOF" {
						return nil
					}
					return fmt.Errorf("reading flows from %s: %w", server, err)
				}
				if output == "json" {
					b, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(r)
					fmt.Fprintln(out, string(b))
					continue
				}
				observe.WriteCompact(out, r)
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&server, "server", "unix://"+node.DefaultHubbleSocketPath, "the Observer API: unix:///PATH or host:port")
	f.BoolVarP(&follow, "follow", "f", false, "print new flows as they come until Ctrl-C")
	f.Uint64Var(&last, "last", 20, "print the last N flows first")
	f.StringVarP(&output, "output", "o", "compact", "output format: compact or json")
	return cmd
}
