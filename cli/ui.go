package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/flowmap"
	"github.com/clustermesh/clustermesh/observe"
	"github.com/clustermesh/clustermesh/ui"
)

const uiLong = `Serve a live map of the mesh in a browser: workloads as nodes grouped by
cluster and namespace, the flows between them as edges labelled with port and
protocol, their rate and their share of drops (green forwarded, orange some
dropped, red mostly dropped), the global services and the clusters that served
them. Pick a cluster, a namespace, a window and a verdict; click an edge or a
workload for its last flows, as clustermesh observe prints them.

The map follows --server's flows (the relay: the whole mesh; an agent: its
node) with the server flags of clustermesh observe. Everything the page needs
is in the binary: it loads nothing from the network.

Access: --listen is loopback by default, where the page answers to
localhost, 127.0.0.1 and [::1] only. Any other address needs --token-file
(open the page once as http://HOST:PORT/?token=TOKEN; it sets a cookie) or
HTTPS with the mesh's mutual TLS (--web-tls-cert-file, --web-tls-key-file and
--web-tls-ca-file: browsers must present a certificate of the mesh CA).`

const uiExample = `  # The whole mesh, through the relay, on this machine
  clustermesh ui --server 127.0.0.1:4245
  # then open http://127.0.0.1:12000/

  # Shared with the team, guarded by a token
  head -c 24 /dev/urandom | base64 > ui.token
  clustermesh ui --server 127.0.0.1:4245 --listen 0.0.0.0:12000 --token-file ui.token`

// uiOptions are ui's flags.
type uiOptions struct {
	observeOptions
	listen                 string
	tokenFile              string
	webCert, webKey, webCA string
	window                 time.Duration
}

func newUICmd() *cobra.Command {
	o := &uiOptions{}
	cmd := &cobra.Command{
		Use:     "ui [--server ADDR] [--listen HOST:PORT]",
		Short:   "Serve a live map of the mesh's flows in a browser",
		Long:    uiLong,
		Example: uiExample,
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return o.run(cmd) },
	}
	f := cmd.Flags()
	f.SortFlags = false
	f.StringVar(&o.listen, "listen", "127.0.0.1:12000", "host:port of the page; beyond loopback only with --token-file or --web-tls-*")
	f.DurationVar(&o.window, "window", flowmap.DefaultWindow, "the longest window the page may pick: flows older than that are forgotten")
	f.StringVar(&o.tokenFile, "token-file", "", "a file holding the token every request must carry (open /?token=TOKEN once)")
	f.StringVar(&o.webCert, "web-tls-cert-file", "", "serve HTTPS with this certificate (clustermesh ca issue --server)")
	f.StringVar(&o.webKey, "web-tls-key-file", "", "the key of --web-tls-cert-file")
	f.StringVar(&o.webCA, "web-tls-ca-file", "", "the mesh CA (ca.crt): browsers must present a certificate it signed")
	o.registerServer(f, "the Observer API: unix:///PATH (an agent's socket), host:port, or tls://host:port (the relay: the whole mesh)")
	return cmd
}

func (o *uiOptions) run(cmd *cobra.Command) error {
	cfg := ui.Config{Map: flowmap.Config{Window: o.window}, Logger: slog.Default()}
	if err := o.guard(&cfg); err != nil {
		return err
	}
	ctx := cmd.Context()
	tc, err := o.tlsConfig()
	if err != nil {
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, o.timeout)
	conn, err := observe.Dial(dctx, o.server, tc)
	cancel()
	if err != nil {
		return o.explain(err)
	}
	defer conn.Close()
	cfg.Client = observerpb.NewObserverClient(conn)
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listening for the UI on %s: %w", o.listen, err)
	}
	scheme := "http"
	if cfg.TLS != nil {
		scheme = "https"
	}
	fmt.Fprintf(cmd.OutOrStdout(), "The mesh's map of %s: %s://%s/\n", o.server, scheme, ln.Addr())
	return ui.New(cfg).Run(ctx, ln)
}

// guard fills the token and the HTTPS configuration of the flags.
func (o *uiOptions) guard(cfg *ui.Config) error {
	if o.tokenFile != "" {
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return fmt.Errorf("reading the UI token: %w", err)
		}
		if cfg.Token = strings.TrimSpace(string(b)); len(cfg.Token) < 16 {
			return fmt.Errorf("the token in %s is shorter than 16 characters", o.tokenFile)
		}
	}
	switch {
	case o.webCert == "" && o.webKey == "" && o.webCA == "":
		return nil
	case o.webCert == "" || o.webKey == "" || o.webCA == "":
		return fmt.Errorf("HTTPS needs --web-tls-cert-file, --web-tls-key-file and --web-tls-ca-file together")
	}
	tc, err := ca.ServerTLSConfig(o.webCert, o.webKey, o.webCA)
	if err != nil {
		return fmt.Errorf("the UI's TLS: %w", err)
	}
	tc.NextProtos = []string{"h2", "http/1.1"}
	cfg.TLS = tc
	return nil
}
