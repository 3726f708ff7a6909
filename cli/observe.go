package cli

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clustermesh/clustermesh/hubbleflags"
	"github.com/clustermesh/clustermesh/node"
	"github.com/clustermesh/clustermesh/observe"
)

const observeLong = `Show the flows an agent or a relay serves with Hubble's Observer API, with
hubble observe's flags and their meaning: the same command line selects the
same flows from clustermesh observe and from hubble observe.

Without --follow it prints the last 20 flows the server keeps (--last N,
--first N, --all, --since, --until) and exits; with --follow it then prints
new flows until Ctrl-C. Against the relay (clustermesh relay), they count over
the whole mesh.

Filters: a flag given several times matches any of its values (OR); different
flags must all match (AND). An either-direction flag (--pod, --ip, --label,
--namespace, --port, --identity, --cluster, ...) matches a flow whose source
or whose destination matches; --from-X and --to-X match one end. --not before
a filter flag leaves out the flows it matches. --pod and --service match a
name prefix, [NAMESPACE/]NAME (no namespace: default).

The server: --server unix:///PATH for an agent's socket (the default,
--hubble-socket-path of clustermesh agent), host:port in plaintext, or
tls://host:port (or --tls) with TLS. An agent's --hubble-listen-address and
the relay require a client certificate of the mesh CA:
--tls-ca-cert-files ca.crt --tls-client-cert-file observer-client.crt
--tls-client-key-file observer-client.key, and --tls-server-name
NODE.CLUSTER.hubble-grpc.clustermesh.io for an agent.

Output: -o compact (default) is one line per flow,
  Nov 21 03:00:00.123: west/shop/frontend-1:41234 (ID:132000) -> east/shop/checkout-0:8080 (ID:70001) Policy denied DROPPED (TCP Flags: SYN)
an end being CLUSTER/NAMESPACE/POD:PORT, or CLUSTER/IP:PORT without a pod; a
reply is printed destination <- source. -o json (or jsonpb) prints what
hubble observe -o json prints: one GetFlowsResponse per line, protobuf JSON
with the proto field names ({"flow":{...},"node_name":"east/node-1","time":...},
{"lost_events":{...}}), so jq recipes written for Hubble work unchanged.`

const observeExample = `  # The last 20 flows of the agent on this node
  clustermesh observe

  # Follow the drops of traffic from west into namespace shop
  clustermesh observe -f --verdict DROPPED --from-cluster west --to-namespace shop

  # Flows of either checkout or cart, but not the forwarded ones, as JSON
  clustermesh observe --pod shop/checkout --pod shop/cart --not --verdict FORWARDED -o json

  # Connections denied by policy in the last 5 minutes (policy-verdict events)
  clustermesh observe --since 5m --type policy-verdict --verdict DROPPED

  # The whole mesh through the relay (mutual TLS from the mesh CA)
  clustermesh observe --server tls://relay.example:4245 --tls-ca-cert-files certs/ca.crt \
    --tls-client-cert-file certs/observer-client.crt --tls-client-key-file certs/observer-client.key

  # What would be sent, without sending it (as hubble observe --print-raw-filters)
  clustermesh observe --from-pod shop/frontend --to-port 8080 --print-raw-filters`

// observeOptions are observe's flags beside the selection (hubbleflags).
type observeOptions struct {
	sel      *hubbleflags.Flags
	server   string
	tls      bool
	tlsFiles observe.ClientTLS
	timeout  time.Duration
	output   string
	printRaw bool
}

func newObserveCmd() *cobra.Command {
	o := &observeOptions{sel: hubbleflags.New()}
	cmd := &cobra.Command{
		Use:     "observe [--server ADDR] [filters] [--last N | --first N | --all] [--since T] [--until T] [-f] [-o compact|json]",
		Short:   "Show the flows of an agent or of the relay, with hubble observe's flags",
		Long:    observeLong,
		Example: observeExample,
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return o.run(cmd) },
	}
	f := cmd.Flags()
	f.SortFlags = false
	o.sel.Register(f)
	o.registerServer(f, "the Observer API: unix:///PATH (an agent's socket), host:port, or tls://host:port")
	f.StringVarP(&o.output, "output", "o", "compact", "output: compact (one line per flow), json or jsonpb (hubble observe -o json's lines)")
	f.BoolVar(&o.printRaw, "print-raw-filters", false, "print the allowlist and denylist that would be sent, as hubble does, and exit")
	hubbleflags.SingleUse(f, "server", "tls-client-cert-file", "tls-client-key-file", "tls-server-name", "timeout", "output")
	cmd.AddCommand(newObserveMapCmd())
	return cmd
}

// registerServer registers the flags that reach an Observer API (an
// agent's or the relay's), which observe, observe map and ui share.
func (o *observeOptions) registerServer(f *pflag.FlagSet, serverHelp string) {
	f.StringVar(&o.server, "server", "unix://"+node.DefaultHubbleSocketPath, serverHelp)
	f.BoolVar(&o.tls, "tls", false, "dial the server with TLS (implied by tls:// and by every --tls-* flag)")
	f.StringSliceVar(&o.tlsFiles.CAFiles, "tls-ca-cert-files", nil, "PEM CA certificates to trust instead of the system's: the mesh CA's ca.crt")
	f.StringVar(&o.tlsFiles.CertFile, "tls-client-cert-file", "", "the client certificate to present (clustermesh ca issue --observer-client NAME)")
	f.StringVar(&o.tlsFiles.KeyFile, "tls-client-key-file", "", "the key of --tls-client-cert-file")
	f.StringVar(&o.tlsFiles.ServerName, "tls-server-name", "", "the name the server's certificate must have, when not the dialed host (an agent: NODE.CLUSTER.hubble-grpc.clustermesh.io)")
	f.BoolVar(&o.tlsFiles.Insecure, "tls-allow-insecure", false, "do not check the server's certificate (never in production)")
	f.DurationVar(&o.timeout, "timeout", 5*time.Second, "how long to wait for the server to answer the connection")
}

func (o *observeOptions) run(cmd *cobra.Command) error {
	req, err := o.sel.Request()
	if err != nil {
		return err
	}
	write, err := o.printer(cmd.OutOrStdout(), cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	if o.printRaw {
		return hubbleflags.WriteRawFilters(cmd.OutOrStdout(), req)
	}
	ctx := cmd.Context()
	stream, closeConn, err := o.getFlows(ctx, req)
	if err != nil {
		return err
	}
	defer closeConn()
	for {
		r, err := stream.Recv()
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case err != nil && (ctx.Err() != nil || status.Code(err) == codes.Canceled):
			return nil // Ctrl-C
		case err != nil:
			return o.explain(err)
		}
		if err := write(r); err != nil {
			return fmt.Errorf("writing flows: %w", err)
		}
	}
}

// getFlows dials the server and sends req.
func (o *observeOptions) getFlows(ctx context.Context, req *observerpb.GetFlowsRequest) (observerpb.Observer_GetFlowsClient, func(), error) {
	tc, err := o.tlsConfig()
	if err != nil {
		return nil, nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	conn, err := observe.Dial(dctx, o.server, tc)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, o.explain(err)
	}
	stream, err := observerpb.NewObserverClient(conn).GetFlows(ctx, req)
	if err != nil {
		conn.Close()
		return nil, nil, o.explain(err)
	}
	return stream, func() { conn.Close() }, nil
}

// tlsConfig is the TLS of the flags; nil for plaintext.
func (o *observeOptions) tlsConfig() (*tls.Config, error) {
	if !o.tls && !o.tlsFiles.Enabled() && !strings.HasPrefix(o.server, observe.TLSPrefix) {
		return nil, nil
	}
	return o.tlsFiles.Config()
}

// printer returns how each response is written: flows and lost events on
// out, node status notices (a relay's unavailable nodes) on errOut, as
// hubble observe writes them.
func (o *observeOptions) printer(out, errOut io.Writer) (func(*observerpb.GetFlowsResponse) error, error) {
	switch o.output {
	case "compact":
		return func(r *observerpb.GetFlowsResponse) error {
			if r.GetNodeStatus() != nil {
				return observe.WriteCompact(errOut, r)
			}
			return observe.WriteCompact(out, r)
		}, nil
	case "json", "JSON", "jsonpb":
		enc, encErr := json.NewEncoder(out), json.NewEncoder(errOut)
		return func(r *observerpb.GetFlowsResponse) error {
			if ns := r.GetNodeStatus(); ns != nil {
				if s := ns.GetStateChange(); s != relaypb.NodeState_NODE_ERROR && s != relaypb.NodeState_NODE_UNAVAILABLE {
					return nil
				}
				return encErr.Encode(r)
			}
			return enc.Encode(r)
		}, nil
	}
	return nil, fmt.Errorf("-o %q: want compact, json or jsonpb", o.output)
}

// explain turns a failure to reach the server or to read from it into an
// error that says what to do.
func (o *observeOptions) explain(err error) error {
	switch {
	case errors.Is(err, observe.ErrUnreachable):
		return fmt.Errorf("%w\n%s", err, o.unreachableHint(err))
	case errors.Is(err, observe.ErrHandshake):
		return fmt.Errorf("%w\n%s", err, tlsHint(err.Error()))
	case errors.Is(err, observe.ErrNotGRPC):
		return fmt.Errorf("%w\nif the server serves TLS (an agent's --hubble-listen-address, the relay), dial it with TLS: "+
			"--server tls://HOST:PORT with --tls-ca-cert-files, --tls-client-cert-file and --tls-client-key-file", err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: no answer from %s within --timeout %s: is the address right, and is a firewall in the way?", err, o.server, o.timeout)
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.InvalidArgument:
		return fmt.Errorf("%s refused the request: %s", o.server, st.Message())
	case codes.Unimplemented:
		return fmt.Errorf("%s does not serve Hubble's flows (GetFlows): %s; is it an agent's Observer API or a relay?", o.server, st.Message())
	case codes.Unavailable:
		return fmt.Errorf("reading flows from %s: %s\n%s", o.server, st.Message(), tlsHint(st.Message()))
	case codes.Unknown:
		return errors.New(st.Message()) // the server's own words, as hubble prints them
	}
	return fmt.Errorf("reading flows from %s: %w", o.server, err)
}

// unreachableHint says where an agent or a relay serves the Observer API.
func (o *observeOptions) unreachableHint(err error) string {
	t, _ := observe.ParseTarget(o.server)
	if t.Network != "unix" {
		return "is an agent (--hubble-listen-address, port 4244 by default) or the relay listening at that address?"
	}
	if strings.Contains(err.Error(), "permission denied") {
		return "the socket is root's and its group's: run as root, or as a member of the socket's group"
	}
	return fmt.Sprintf("is `clustermesh agent` running on this node, with --enable-hubble and --node-name? "+
		"It serves the Observer API at --hubble-socket-path (default %s); point --server at it (unix:///PATH), "+
		"or at an agent's --hubble-listen-address or the relay (host:port with TLS)", node.DefaultHubbleSocketPath)
}

// tlsHint says which TLS flag a TLS failure asks for.
func tlsHint(msg string) string {
	switch {
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "the server speaks plaintext: drop --tls, tls:// and the --tls-* flags"
	case strings.Contains(msg, "certificate required"), strings.Contains(msg, "bad certificate"),
		strings.Contains(msg, "remote error: tls: unknown certificate authority"):
		return "the server wants a client certificate of its CA (the mesh CA): pass --tls-client-cert-file and " +
			"--tls-client-key-file (clustermesh ca issue --observer-client NAME writes them)"
	case strings.Contains(msg, "unknown authority"):
		return "the server's certificate is not of a CA you trust: pass the mesh CA's ca.crt with --tls-ca-cert-files"
	case strings.Contains(msg, "is valid for"), strings.Contains(msg, "not valid for any names"), strings.Contains(msg, "IP SANs"):
		return "the server's certificate does not name the host you dialed: pass --tls-server-name " +
			"(an agent of node N in cluster C: N.C.hubble-grpc.clustermesh.io)"
	case strings.Contains(msg, "expired"):
		return "a certificate has expired: issue a new one (clustermesh ca issue)"
	}
	return "check --server and the --tls-* flags"
}
