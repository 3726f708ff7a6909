package cli

import (
	"fmt"
	"io"
	"net"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/ca"
)

func newCACmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "Create the mesh CA and issue certificates from it"}
	cmd.AddCommand(newCACreateCmd(), newCAIssueCmd())
	return cmd
}

func newCACreateCmd() *cobra.Command {
	var out, name string
	var validity time.Duration
	cmd := &cobra.Command{
		Use:   "create --out DIR",
		Short: "Create a new mesh CA (ca.crt, ca.key) in DIR",
		Long: `Create a new mesh CA: an ECDSA P-256 key (ca.key, mode 0600) and a self-signed
certificate (ca.crt). Every cluster of one mesh must trust the same CA. Keep
ca.key offline where you can; only 'ca issue' needs it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := ca.New(name, validity)
			if err != nil {
				return fmt.Errorf("creating the mesh CA: %w", err)
			}
			if err := c.Save(out); err != nil {
				return fmt.Errorf("saving the mesh CA in %s: %w", out, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "mesh CA %q written to %s (valid until %s)\n", name, out, c.Cert.NotAfter.Format(time.RFC3339))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory to write ca.crt and ca.key into (must not hold a CA yet)")
	cmd.Flags().StringVar(&name, "name", "clustermesh CA", "common name of the CA")
	cmd.Flags().DurationVar(&validity, "validity", 10*365*24*time.Hour, "how long the CA is valid")
	cmd.MarkFlagRequired("out")
	return cmd
}

// caIssueFlags are the flags of `clustermesh ca issue`.
type caIssueFlags struct {
	caDir, out, cluster, server, client string
	observerServer, observerClient      string
	dnsNames, ips                       []string
}

func newCAIssueCmd() *cobra.Command {
	var fl caIssueFlags
	cmd := &cobra.Command{
		Use:   "issue --ca DIR --out DIR (--cluster NAME | --server NAME | --client USER | --observer-server CLUSTER | --observer-client NAME)",
		Short: "Issue certificates from the mesh CA",
		Long: `Issue certificates from the mesh CA in --ca.

  --cluster east   the whole bundle of cluster east: server.crt (the apiserver),
                   admin-east.crt (the apiserver writes with it) and
                   remote-east.crt (east's agents read their peers with it),
                   plus a copy of ca.crt
  --server NAME    one server certificate (add --dns and --ip for its names)
  --client USER    one client certificate; USER is the etcd user, e.g. remote-east
  --observer-server east
                   observer.crt: the certificate every agent of east serves
                   Hubble's Observer API with (*.east.hubble-grpc.clustermesh.io;
                   clients check <node>.east.hubble-grpc.clustermesh.io)
  --observer-client NAME
                   NAME.crt: a client certificate for the relay or the CLI to
                   present to the agents' Observer servers (and to the relay)

Server certificates need every name and address clients dial: the
LoadBalancer's IP or DNS name, or the node IPs for a NodePort.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return fl.issue(cmd.OutOrStdout()) },
	}
	f := cmd.Flags()
	f.StringVar(&fl.caDir, "ca", "", "directory holding ca.crt and ca.key")
	f.StringVar(&fl.out, "out", "", "directory to write the certificates into")
	f.StringVar(&fl.cluster, "cluster", "", "issue the whole bundle of this cluster")
	f.StringVar(&fl.server, "server", "", "issue one server certificate with this common name")
	f.StringVar(&fl.client, "client", "", "issue one client certificate for this etcd user")
	f.StringSliceVar(&fl.dnsNames, "dns", nil, "DNS names of the server certificate (repeatable)")
	f.StringSliceVar(&fl.ips, "ip", nil, "IP addresses of the server certificate (repeatable)")
	cmd.MarkFlagRequired("ca")
	cmd.MarkFlagRequired("out")
	f.StringVar(&fl.observerServer, "observer-server", "", "issue the Observer server certificate of this cluster's agents (observer.crt)")
	f.StringVar(&fl.observerClient, "observer-client", "", "issue one Observer client certificate with this name (NAME.crt)")
	cmd.MarkFlagsMutuallyExclusive("cluster", "server", "client", "observer-server", "observer-client")
	return cmd
}

// issue issues what the flags ask for and says where it was written.
func (fl *caIssueFlags) issue(w io.Writer) error {
	c, err := ca.Load(fl.caDir)
	if err != nil {
		return fmt.Errorf("loading the mesh CA from %s: %w", fl.caDir, err)
	}
	var ips []net.IP
	for _, s := range fl.ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("--ip %q is not an IP address", s)
		}
		ips = append(ips, ip)
	}
	switch {
	case fl.cluster != "":
		dns := fl.dnsNames
		if len(dns) == 0 && len(ips) == 0 {
			dns, ips = []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}
		}
		b, err := c.IssueBundle(fl.out, fl.cluster, dns, ips)
		if err != nil {
			return fmt.Errorf("issuing the bundle of cluster %s into %s: %w", fl.cluster, fl.out, err)
		}
		fmt.Fprintf(w, "bundle of cluster %s written to %s: %s, %s, %s\n", fl.cluster, fl.out, b.ServerCert(), b.AdminCert(), b.RemoteCert())
	case fl.server != "":
		i, err := c.IssueServer(fl.server, fl.dnsNames, ips)
		if err != nil {
			return fmt.Errorf("issuing server certificate %s: %w", fl.server, err)
		}
		if err := i.Save(fl.out, fl.server); err != nil {
			return fmt.Errorf("saving server certificate %s in %s: %w", fl.server, fl.out, err)
		}
		fmt.Fprintf(w, "server certificate %s written to %s\n", fl.server, fl.out)
	case fl.client != "":
		i, err := c.IssueClient(fl.client)
		if err != nil {
			return fmt.Errorf("issuing the client certificate of etcd user %s: %w", fl.client, err)
		}
		if err := i.Save(fl.out, fl.client); err != nil {
			return fmt.Errorf("saving the client certificate of etcd user %s in %s: %w", fl.client, fl.out, err)
		}
		fmt.Fprintf(w, "client certificate for etcd user %s written to %s\n", fl.client, fl.out)
	case fl.observerServer != "" || fl.observerClient != "":
		return fl.issueObserver(w, c)
	default:
		return fmt.Errorf("say what to issue: --cluster NAME, --server NAME, --client USER, --observer-server CLUSTER or --observer-client NAME")
	}
	return nil
}

// issueObserver issues the certificate of --observer-server or
// --observer-client.
func (fl *caIssueFlags) issueObserver(w io.Writer, c *ca.CA) error {
	what, file := "Observer client certificate "+fl.observerClient, fl.observerClient
	issue := func() (*ca.Issued, error) { return c.IssueClient(fl.observerClient) }
	if fl.observerServer != "" {
		what, file = "Observer server certificate of cluster "+fl.observerServer, "observer"
		issue = func() (*ca.Issued, error) { return c.IssueObserverServer(fl.observerServer) }
	}
	i, err := issue()
	if err != nil {
		return fmt.Errorf("issuing the %s: %w", what, err)
	}
	if err := i.Save(fl.out, file); err != nil {
		return fmt.Errorf("saving the %s in %s: %w", what, fl.out, err)
	}
	fmt.Fprintf(w, "%s written to %s (%s.crt, %s.key)\n", what, fl.out, file, file)
	if fl.observerServer != "" {
		fmt.Fprintf(w, "it is valid for %s\n", ca.ObserverDNSName(fl.observerServer))
	}
	return nil
}
