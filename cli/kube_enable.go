package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/wire"
)

type enableOptions struct {
	Context, Namespace   string
	ClusterName          string
	ClusterID            uint32
	MaxConnected         uint32
	ServiceType          string
	Image                string
	CADir, CAFromContext string
	ServerDNS            []string
	ServerIPs            []string
	DryRun               bool
}

func newEnableCmd() *cobra.Command {
	var kf kubeFlags
	o := enableOptions{}
	cmd := &cobra.Command{
		Use:   "enable --context C --cluster-name NAME --cluster-id ID",
		Short: "Deploy the mesh apiserver in a Kubernetes cluster (CA, certificates, Deployment, Service)",
		Long: `Deploy a cluster's mesh apiserver through its kubeconfig context. In the
namespace --namespace it creates, or keeps when they are already right:

  secret/clustermesh-ca                      the mesh CA (ca.crt, ca.key)
  secret/clustermesh-apiserver-server-cert   the apiserver's server certificate
  secret/clustermesh-apiserver-admin-cert    admin-<cluster>: the apiserver writes with it
  secret/clustermesh-apiserver-remote-cert   remote-<cluster>: this cluster's agents
                                             read their peers with it
  configmap/clustermesh-config               cluster name, id and mesh size
  serviceaccount, clusterrole(binding)       read access for the Kubernetes state source
  role(binding)                              the apiserver keeps its identity numbers
                                             in configmap/clustermesh-identities
  deployment/clustermesh-apiserver           'clustermesh apiserver --state-source=kubernetes'
  service/clustermesh-apiserver              LoadBalancer (default) or NodePort, port 2379

Every cluster of a mesh needs the same CA: the first cluster creates one (or
takes --ca-dir, from 'clustermesh ca create'); the others take it with
--ca-from-context FIRST (or the same --ca-dir). A cluster that already holds
a different CA is refused.

Certificates are kept while they are valid with the CA for more than 30
days and the server certificate names every address clients may dial: the
service's cluster IP, its LoadBalancer ingress (once the cloud gave one: run
enable again, or let connect do it) or, for NodePort, the nodes' IPs, and
--server-ip/--server-dns. Otherwise they are re-issued and the Deployment
rolls.

Running enable again changes nothing that is already right; --dry-run prints
the objects as YAML (private keys not shown) and writes nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runEnable(cmd.Context(), &kf, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	kf.register(f)
	f.StringVar(&o.Context, "context", "", "kubeconfig context of the cluster (default: the current context)")
	f.StringVar(&o.Namespace, "namespace", defaultKubeNamespace, "namespace of the mesh apiserver")
	f.StringVar(&o.ClusterName, "cluster-name", "", "name of this cluster in the mesh (a-z, 0-9, '-'; at most 32)")
	f.Uint32Var(&o.ClusterID, "cluster-id", 0, "id of this cluster, 1..max-connected-clusters, unique in the mesh")
	f.Uint32Var(&o.MaxConnected, "max-connected-clusters", wire.DefaultMaxConnectedClusters, "mesh size: 255 or 511 (the same on every cluster)")
	f.StringVar(&o.ServiceType, "service-type", string(corev1.ServiceTypeLoadBalancer), "type of the apiserver's Service: LoadBalancer or NodePort")
	f.StringVar(&o.Image, "image", defaultImage, "container image with the clustermesh binary")
	f.StringVar(&o.CADir, "ca-dir", "", "take the mesh CA from this directory (ca.crt, ca.key from 'clustermesh ca create')")
	f.StringVar(&o.CAFromContext, "ca-from-context", "", "take the mesh CA from the cluster of this kubeconfig context (already enabled)")
	f.StringSliceVar(&o.ServerDNS, "server-dns", nil, "extra DNS name of the server certificate (repeatable)")
	f.StringSliceVar(&o.ServerIPs, "server-ip", nil, "extra IP address of the server certificate (repeatable)")
	f.BoolVar(&o.DryRun, "dry-run", false, "print the objects as YAML and write nothing")
	cmd.MarkFlagRequired("cluster-name")
	cmd.MarkFlagRequired("cluster-id")
	cmd.MarkFlagsMutuallyExclusive("ca-dir", "ca-from-context")
	return cmd
}

func runEnable(ctx context.Context, kf *kubeFlags, o enableOptions, out, errOut io.Writer) error {
	if err := wire.ValidateClusterName(o.ClusterName); err != nil {
		return fmt.Errorf("--cluster-name: %w", err)
	}
	if err := wire.ValidateClusterID(o.ClusterName, o.ClusterID, o.MaxConnected); err != nil {
		return fmt.Errorf("--cluster-id/--max-connected-clusters: %w", err)
	}
	var svcType corev1.ServiceType
	switch strings.ToLower(o.ServiceType) {
	case "loadbalancer":
		svcType = corev1.ServiceTypeLoadBalancer
	case "nodeport":
		svcType = corev1.ServiceTypeNodePort
	default:
		return fmt.Errorf("--service-type %q: want LoadBalancer or NodePort", o.ServiceType)
	}
	var extraIPs []net.IP
	for _, s := range o.ServerIPs {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("--server-ip %q is not an IP address", s)
		}
		extraIPs = append(extraIPs, ip)
	}
	t, err := kf.target(o.Context)
	if err != nil {
		return err
	}
	ns := o.Namespace
	cs := t.Client.CoreV1()

	// What is there already.
	existing := map[string]*corev1.Secret{}
	for _, name := range []string{caSecretName, serverSecretName, adminSecretName, remoteSecretName} {
		s, err := cs.Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return fmt.Errorf("context %s: read secret %s/%s: %w", t.Context, ns, name, err)
		default:
			existing[name] = s
		}
	}
	var peers []string
	if cm, err := cs.ConfigMaps(ns).Get(ctx, meshConfigName, metav1.GetOptions{}); err == nil {
		peers = splitList(cm.Data[cfgPeers])
		oldName, oldID := cm.Data[cfgClusterName], cm.Data[cfgClusterID]
		if len(peers) > 0 && (oldName != o.ClusterName || oldID != strconv.FormatUint(uint64(o.ClusterID), 10)) {
			return fmt.Errorf("context %s is enabled as cluster %s (id %s) and connected to %s: its name and id cannot change while connected; run clustermesh disconnect first",
				t.Context, oldName, oldID, strings.Join(peers, ", "))
		}
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("context %s: read configmap %s/%s: %w", t.Context, ns, meshConfigName, err)
	}
	trusted, err := trustedCAs(ctx, t, ns)
	if err != nil {
		return err
	}

	// The mesh CA: given, from another cluster, already here, or new.
	var mesh *meshCA
	switch {
	case o.CADir != "":
		if mesh, err = loadCADir(o.CADir); err != nil {
			return fmt.Errorf("--ca-dir: %w", err)
		}
	case o.CAFromContext != "":
		other, err := kf.target(o.CAFromContext)
		if err != nil {
			return fmt.Errorf("--ca-from-context: %w", err)
		}
		s, err := other.Client.CoreV1().Secrets(ns).Get(ctx, caSecretName, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("--ca-from-context %s: read secret %s/%s: %w (enable that cluster first)", o.CAFromContext, ns, caSecretName, err)
		}
		if mesh, err = caFromSecret(s, "context "+o.CAFromContext); err != nil {
			return err
		}
	}
	if cur := existing[caSecretName]; cur != nil {
		here, err := caFromSecret(cur, "context "+t.Context)
		if err != nil {
			return fmt.Errorf("%w: fix or delete the secret (clustermesh disable --delete-ca)", err)
		}
		if mesh == nil {
			mesh = here
		} else if !sameCA(mesh.CA.Cert, here.CA.Cert) {
			return fmt.Errorf("context %s already holds another mesh CA (%q) in secret %s/%s: every cluster of a mesh needs the same CA; to replace it, run clustermesh disable --delete-ca --context %s first",
				t.Context, here.CA.Cert.Subject.CommonName, ns, caSecretName, t.Context)
		}
	}
	newCA := mesh == nil
	if newCA {
		if mesh, err = newMeshCA(); err != nil {
			return err
		}
	}

	c := meshCluster{Namespace: ns, Name: o.ClusterName, ID: o.ClusterID, MaxConnected: o.MaxConnected,
		ServiceType: svcType, Image: o.Image, Peers: peers, TrustedCAs: trusted}
	// The namespace and the Service come first (unless this is a dry run),
	// so that the server certificate names the service's cluster IP and
	// node port addresses from the start.
	early := []runtime.Object{namespaceObject(ns), serviceObject(c)}
	var a *applier
	if !o.DryRun {
		if a, err = newApplier(t, out); err != nil {
			return err
		}
		for _, obj := range early {
			if err := a.apply(ctx, obj); err != nil {
				return fmt.Errorf("context %s: %w", t.Context, err)
			}
		}
	}

	// The certificates: kept when still right, else issued.
	dnsNames, ips, err := serverNames(ctx, t, ns, svcType, o.ServerDNS, extraIPs)
	if err != nil {
		return err
	}
	reqs := []certRequest{
		{Secret: serverSecretName, CN: "clustermesh-apiserver." + o.ClusterName, Usage: ca.ServerAuth, DNSNames: dnsNames, IPs: ips},
		{Secret: adminSecretName, CN: "admin-" + o.ClusterName, Usage: ca.ClientAuth},
		{Secret: remoteSecretName, CN: "remote-" + o.ClusterName, Usage: ca.ClientAuth},
	}
	now := time.Now()
	var certSecrets []*corev1.Secret
	for _, r := range reqs {
		cur := existing[r.Secret]
		if ok, why := r.reuse(cur, mesh, now); ok {
			certSecrets = append(certSecrets, tlsSecret(r.Secret, ns, cur.Data[corev1.TLSCertKey], cur.Data[corev1.TLSPrivateKeyKey], mesh.CertPEM))
			continue
		} else if cur != nil {
			fmt.Fprintf(errOut, "re-issuing %s: %s\n", r.Secret, why)
		}
		s, err := r.issue(mesh, ns)
		if err != nil {
			return err
		}
		certSecrets = append(certSecrets, s)
	}

	objs := []runtime.Object{
		serviceAccountObject(c), clusterRoleObject(c), clusterRoleBindingObject(c), roleObject(c), roleBindingObject(c),
		caSecretObject(ns, mesh.CertPEM, mesh.KeyPEM),
	}
	for _, s := range certSecrets {
		objs = append(objs, s)
	}
	objs = append(objs, meshConfigObject(c), deploymentObject(c, certsHash(certSecrets[0], certSecrets[1])))

	if o.DryRun {
		fmt.Fprintf(out, "# clustermesh enable --dry-run: context %s, cluster %s (id %d); nothing was written\n", t.Context, o.ClusterName, o.ClusterID)
		return printYAML(out, true, append(early, objs...)...)
	}
	for _, obj := range objs {
		if err := a.apply(ctx, obj); err != nil {
			return fmt.Errorf("context %s: %w", t.Context, err)
		}
	}
	if newCA {
		fmt.Fprintf(errOut, "created a new mesh CA in secret %s/%s: enable the other clusters with --ca-from-context %s\n", ns, caSecretName, t.Context)
	}
	if svcType == corev1.ServiceTypeNodePort {
		fmt.Fprintf(errOut, "warning: NodePort: peers' agents dial a node IP of this cluster on the service's node port: every node IP must be reachable from every peer node\n")
	}
	fmt.Fprintf(out, "cluster %s (id %d) enabled in context %s, namespace %s\n", o.ClusterName, o.ClusterID, t.Context, ns)
	return nil
}

// serverNames are the DNS names and addresses the server certificate must
// name: the service's in-cluster names, loopback, the cluster IP, the
// LoadBalancer ingress or (NodePort) every node's addresses, and extras.
func serverNames(ctx context.Context, t *kubeTarget, ns string, svcType corev1.ServiceType, extraDNS []string, extraIPs []net.IP) ([]string, []net.IP, error) {
	dns := []string{"localhost", apiserverName, apiserverName + "." + ns, apiserverName + "." + ns + ".svc",
		apiserverName + "." + ns + ".svc.cluster.local"}
	dns = append(dns, extraDNS...)
	ips := append([]net.IP{net.IPv4(127, 0, 0, 1)}, extraIPs...)
	addIP := func(s string) {
		if ip := net.ParseIP(s); ip != nil {
			ips = append(ips, ip)
		}
	}
	svc, err := t.Client.CoreV1().Services(ns).Get(ctx, apiserverName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, nil, fmt.Errorf("context %s: read service %s/%s: %w", t.Context, ns, apiserverName, err)
	default:
		addIP(svc.Spec.ClusterIP)
		if svcType == corev1.ServiceTypeLoadBalancer {
			for _, in := range svc.Status.LoadBalancer.Ingress {
				addIP(in.IP)
				if in.Hostname != "" {
					dns = append(dns, in.Hostname)
				}
			}
		}
	}
	if svcType == corev1.ServiceTypeNodePort {
		nodes, err := t.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, nil, fmt.Errorf("context %s: list nodes: %w", t.Context, err)
		}
		for _, n := range nodes.Items {
			for _, a := range n.Status.Addresses {
				if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
					addIP(a.Address)
				}
			}
		}
	}
	slices.Sort(dns)
	dns = slices.Compact(dns)
	slices.SortFunc(ips, func(a, b net.IP) int { return strings.Compare(a.String(), b.String()) })
	ips = slices.CompactFunc(ips, net.IP.Equal)
	return dns, ips, nil
}

func newDisableCmd() *cobra.Command {
	var kf kubeFlags
	var context, ns string
	var deleteCA, force bool
	cmd := &cobra.Command{
		Use:   "disable --context C",
		Short: "Remove the mesh apiserver from a Kubernetes cluster",
		Long: `Remove what 'clustermesh enable' created: the Deployment, the Service, the
certificate secrets, the config, the service account and its roles, and what
the apiserver and connect wrote: the identity numbers (configmap
clustermesh-identities), the remotes and the trusted peer CAs. The mesh CA
secret stays (other clusters of the mesh share it) unless --delete-ca; the
namespace stays.

A cluster still connected to peers is refused (its peers would keep dialing
it): run 'clustermesh disconnect' first, or pass --force.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := kf.target(context)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if cm, err := t.Client.CoreV1().ConfigMaps(ns).Get(ctx, meshConfigName, metav1.GetOptions{}); err == nil {
				if peers := splitList(cm.Data[cfgPeers]); len(peers) > 0 && !force {
					return fmt.Errorf("context %s: cluster %s is connected to %s: run clustermesh disconnect first, or pass --force",
						t.Context, cm.Data[cfgClusterName], strings.Join(peers, ", "))
				}
			} else if !apierrors.IsNotFound(err) {
				return fmt.Errorf("context %s: %w", t.Context, err)
			}
			a, err := newApplier(t, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			c := meshCluster{Namespace: ns}
			objs := []runtime.Object{
				deploymentObject(c, ""), serviceObject(c), meshConfigObject(c),
				configMapObject(identitiesConfigMap, ns), configMapObject(trustedCAsName, ns),
				tlsSecret(serverSecretName, ns, nil, nil, nil), tlsSecret(adminSecretName, ns, nil, nil, nil),
				tlsSecret(remoteSecretName, ns, nil, nil, nil), tlsSecret(remotesSecretName, ns, nil, nil, nil),
				clusterRoleBindingObject(c), clusterRoleObject(c), roleBindingObject(c), roleObject(c), serviceAccountObject(c),
			}
			if deleteCA {
				objs = append(objs, caSecretObject(ns, nil, nil))
			}
			for _, obj := range objs {
				if err := a.remove(ctx, obj); err != nil {
					return fmt.Errorf("context %s: %w", t.Context, err)
				}
			}
			if !deleteCA {
				fmt.Fprintf(cmd.ErrOrStderr(), "kept secret %s/%s (the mesh CA): --delete-ca removes it\n", ns, caSecretName)
			}
			return nil
		},
	}
	f := cmd.Flags()
	kf.register(f)
	f.StringVar(&context, "context", "", "kubeconfig context of the cluster (default: the current context)")
	f.StringVar(&ns, "namespace", defaultKubeNamespace, "namespace of the mesh apiserver")
	f.BoolVar(&deleteCA, "delete-ca", false, "also delete the mesh CA secret")
	f.BoolVar(&force, "force", false, "disable even while connected to peers")
	return cmd
}

// trustedCAs reads the peers' CAs the apiserver accepts (peer → PEM), nil
// when there are none.
func trustedCAs(ctx context.Context, t *kubeTarget, ns string) (map[string]string, error) {
	cm, err := t.Client.CoreV1().ConfigMaps(ns).Get(ctx, trustedCAsName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("context %s: read configmap %s/%s: %w", t.Context, ns, trustedCAsName, err)
	}
	return cm.Data, nil
}
