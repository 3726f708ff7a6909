package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/kubemesh"
)

const connectLong = `Connect clusters enabled with 'clustermesh enable'. First every check, before
anything is written; each failure says how to fix it:

  - names and cluster ids differ, max-connected-clusters is the same;
  - the same mesh CA (unless --allow-mismatching-ca);
  - pod CIDRs and node IPs do not overlap between the clusters;
  - each apiserver that is read has a known endpoint (its LoadBalancer address,
    or a node IP and the node port, or --destination-endpoint/--source-endpoint).

Then, for each direction "X reads Y": X's secret clustermesh-remotes gets the
etcd client config for Y (the agents' config directory: one file per remote,
with X's remote certificate), and Y's apiserver lets remote-X read (its
configmap's peers and the Deployment's --peer).

  --connection-mode bidirectional   A and each destination read each other (default)
  --connection-mode unicast         A reads each destination
  --connection-mode mesh            every cluster given reads every other

When Y's server certificate does not name the endpoint X's agents dial (the
LoadBalancer address, the node IP, or the host of --destination-endpoint),
connect re-issues it from Y's CA with that address added (secret
clustermesh-apiserver-server-cert), so that the agents can verify Y's
apiserver by it.

--allow-mismatching-ca connects clusters whose CAs differ instead of refusing:
connect issues, from Y's CA, a client certificate remote-X for X's agents and
puts it with Y's CA beside Y's config in X's secret (.remote-Y.crt,
.remote-Y.key, .ca-Y.crt): X's agents verify Y's apiserver with Y's CA and
present a certificate of it. No apiserver trusts another cluster's CA, so a
peer's CA can mint no user of Y's etcd. It needs Y's CA key (the secret
clustermesh-ca that enable wrote); the certificate is renewed by connecting
again when it nears expiry.

The apiserver reads its peers, trusted CAs and certificates when it starts:
every change above updates its Deployment, which restarts the pod (connect
says so). Connecting again changes nothing.

`

func newConnectCmd() *cobra.Command {
	var kf kubeFlags
	var o kubemesh.ConnectOptions
	cmd := &cobra.Command{
		Use:   "connect --context A --destination-context B [--destination-context C ...]",
		Short: "Connect enabled Kubernetes clusters: each one's agents read the others' apiservers",
		Long:  connectLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Kubeconfig = kf.kubeconfig
			res, err := kubemesh.Connect(cmd.Context(), o)
			out := cmd.OutOrStdout()
			printSteps(out, res.Steps)
			for _, l := range res.Links {
				fmt.Fprintf(out, "%s reads %s at %s\n", l.Reader, l.Target, l.Endpoint)
			}
			return err
		},
	}
	f := cmd.Flags()
	kf.register(f)
	f.StringVar(&o.Context, "context", "", "kubeconfig context of the source cluster (default: the current context)")
	f.StringArrayVar(&o.Destinations, "destination-context", nil, "kubeconfig context of a cluster to connect to (repeatable)")
	f.StringVar(&o.Namespace, "namespace", defaultKubeNamespace, "namespace of the mesh apiservers (the same in every cluster)")
	f.StringVar(&o.Mode, "connection-mode", kubemesh.ModeBidirectional, "bidirectional, unicast or mesh")
	f.StringArrayVar(&o.DestinationEndpoints, "destination-endpoint", nil, "https://HOST:PORT of a destination's apiserver, instead of its Service's (repeatable, in the order of --destination-context)")
	f.StringVar(&o.SourceEndpoint, "source-endpoint", "", "https://HOST:PORT of the source's apiserver, instead of its Service's")
	f.BoolVar(&o.AllowMismatchingCA, "allow-mismatching-ca", false, "connect clusters whose mesh CAs differ: each cluster's agents get a client certificate of the other cluster's CA (no apiserver trusts another CA; see SECURITY.md)")
	cmd.MarkFlagRequired("destination-context")
	return cmd
}

// printSteps prints what connect or disconnect changed, one line each.
func printSteps(w io.Writer, steps []kubemesh.Step) {
	for _, s := range steps {
		switch s := s.(type) {
		case kubemesh.ObjectChange:
			printObject(w, s)
		case kubemesh.RemoteChange:
			what := "no longer reads " + s.Remote
			if s.Reads {
				what = "reads " + s.Remote
			}
			if s.WithRemoteCA {
				what += " with a certificate of its CA"
			}
			fmt.Fprintf(w, "cluster %s: secret %s/%s: %s\n", s.Cluster, s.Namespace, kubemesh.RemotesSecretName, what)
		case kubemesh.TrustRevoked:
			fmt.Fprintf(w, "cluster %s: configmap %s/%s: no longer trusts the CA of %s\n", s.Cluster, s.Namespace, kubemesh.TrustedCAsName, s.Peer)
		case kubemesh.CertReissued:
			fmt.Fprintf(w, "cluster %s: re-issued the apiserver's server certificate (secret %s/%s) to name %s, the address its peers dial\n",
				s.Cluster, s.Namespace, kubemesh.ServerSecretName, s.Host)
		case kubemesh.APIServerRestart:
			fmt.Fprintf(w, "cluster %s: the apiserver pod restarts to load it: %s (peers: %s)\n", s.Cluster, strings.Join(s.Reasons, "; "), orNone(s.Peers))
		case fmt.Stringer: // kubemesh.SlicesDeleted
			fmt.Fprintln(w, s)
		}
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
