package cli

import (
	"context"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/internal/metricsserver"
	"github.com/clustermesh/clustermesh/relay"
)

const relayLong = `Serve Hubble's Observer API for the whole mesh: one endpoint that the hubble
CLI and 'clustermesh observe' read the flows, status and nodes of every agent
of every connected cluster from.

The relay learns the agents from a peer service (--peer-service): every agent
serves one, announcing every node of the mesh it knows (its own cluster's and
every remote's) as cluster/node with the address of its Observer server: the
node's clustermesh.io/hubble-address annotation, else its first address on
port 4244. Give one or more (the relay follows the union): an agent's unix
socket (unix:///var/run/clustermesh/hubble.sock) or an agent's TCP address.

The relay dials every agent with mutual TLS from the mesh CA: it presents
--tls-client-cert-file (clustermesh ca issue --observer-client hubble-relay)
and checks that the agent of node N in cluster C presents a certificate for
N.C.hubble-grpc.clustermesh.io (clustermesh ca issue --observer-server C
issues the one every agent of C serves with). An agent that refuses, or whose
certificate is for another name, is reported unavailable.

Flows are merged in time order: a flow waits at most --sort-window for older
ones from quieter agents. An agent that is down is reported in a node status
event (NODE_UNAVAILABLE), never waited for; one that comes back is reported
connected and resumes after its last flow; one that leaves the mesh is
reported gone. --last N and --first N count over the whole mesh.

The relay serves on --listen-address with mutual TLS (--tls-server-cert-file,
clients must present a certificate of the mesh CA) or, without a certificate,
in plaintext on a loopback address only; and on --unix-socket (mode 0600).`

const relayExample = `  # A relay on this host, following the local agent's peer service
  clustermesh relay --peer-service unix:///var/run/clustermesh/hubble.sock \
    --listen-address 127.0.0.1:4245 \
    --tls-ca-file certs/ca.crt \
    --tls-client-cert-file certs/hubble-relay.crt --tls-client-key-file certs/hubble-relay.key

  # Then, with the hubble CLI or clustermesh observe
  hubble observe --server 127.0.0.1:4245 --follow
  hubble list nodes --server 127.0.0.1:4245`

func newRelayCmd() *cobra.Command {
	cfg := relay.DefaultConfig()
	metricsAddr := defaultRelayMetricsAddr
	cmd := &cobra.Command{
		Use:     "relay --peer-service ADDR... (--listen-address HOST:PORT | --unix-socket PATH)",
		Short:   "Serve Hubble's Observer API for the whole mesh, from every agent",
		Long:    relayLong,
		Example: relayExample,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Log = slog.Default()
			return runRelay(cmd.Context(), cfg, metricsAddr)
		},
	}
	cfg.RegisterFlags(cmd.Flags())
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", metricsAddr, "host:port to serve Prometheus /metrics on, without authentication: loopback only by default (\"\" disables)")
	return cmd
}

// defaultRelayMetricsAddr is loopback: the metrics have no authentication.
const defaultRelayMetricsAddr = "127.0.0.1:9966"

// runRelay runs the relay until ctx is done; its metrics listen once it
// serves.
func runRelay(ctx context.Context, cfg relay.Config, metricsAddr string) error {
	r, err := relay.New(cfg)
	if err != nil {
		return err
	}
	metrics := func(ctx context.Context) error {
		select {
		case <-r.Serving():
		case <-ctx.Done():
			return nil
		}
		return metricsserver.Serve(ctx, slog.Default(), metricsAddr, r.Collector())
	}
	return runAll(ctx, r.Run, metrics)
}
