package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Keys of the remotes secret besides one config per remote cluster. They
// start with a dot: the agent takes every other file of its config directory
// for a remote's config.
const (
	remotesCAKey   = ".ca.crt"
	remotesCertKey = ".remote.crt"
	remotesKeyKey  = ".remote.key"
)

// Connection modes of connect.
const (
	modeBidirectional = "bidirectional"
	modeUnicast       = "unicast"
	modeMesh          = "mesh"
)

// peersFieldManager owns the peers key of the config map.
const peersFieldManager = "clustermesh-connect"

// meshMember is an enabled cluster as connect and disconnect see it.
type meshMember struct {
	t         *kubeTarget
	ns        string
	name      string
	id, max   uint32
	peers     []string // clusters allowed to read this one (the apiserver's --peer)
	remotes   map[string][]byte
	caPEM     []byte
	ca        *x509.Certificate
	caSecret  *corev1.Secret
	remote    *corev1.Secret // remote-<name>: its agents read peers with it
	server    *x509.Certificate
	endpoint  string // https://host:port, "" when unknown
	whyNoEP   string
	podCIDRs  []owned[netip.Prefix]
	nodeIPs   []owned[netip.Addr]
	configMap *corev1.ConfigMap
	// trustedCAs: peer CAs (trustedCAKey → PEM) its apiserver accepts.
	trustedCAs map[string]string

	// Set by preflight when the server certificate does not name the
	// address peers dial: connect re-issues it for reissueHost with mesh.
	reissueHost string
	mesh        *meshCA
	// Set by the writes: the new server certificate, and why the apiserver
	// must restart (applyAPIServer).
	serverSecret *corev1.Secret
	changes      []string
}

// owned is an address or prefix and the node it belongs to.
type owned[T any] struct {
	v    T
	node string
}

// loadMember reads an enabled cluster: its config, CA, certificates, nodes
// and apiserver endpoint (override, when given, is the endpoint to use).
func loadMember(ctx context.Context, t *kubeTarget, ns, override string) (*meshMember, error) {
	core := t.Client.CoreV1()
	m := &meshMember{t: t, ns: ns}
	cm, err := core.ConfigMaps(ns).Get(ctx, meshConfigName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("context %s has no mesh apiserver (no configmap %s/%s): run clustermesh enable --context %s first", t.Context, ns, meshConfigName, t.Context)
	} else if err != nil {
		return nil, fmt.Errorf("context %s: %w", t.Context, err)
	}
	m.configMap = cm
	m.name = cm.Data[cfgClusterName]
	id, err1 := strconv.ParseUint(cm.Data[cfgClusterID], 10, 32)
	max, err2 := strconv.ParseUint(cm.Data[cfgMaxConnected], 10, 32)
	if m.name == "" || err1 != nil || err2 != nil {
		return nil, fmt.Errorf("context %s: configmap %s/%s is incomplete (%v): run clustermesh enable --context %s again", t.Context, ns, meshConfigName, cm.Data, t.Context)
	}
	m.id, m.max = uint32(id), uint32(max)
	m.peers = splitList(cm.Data[cfgPeers])

	caSecret, err := core.Secrets(ns).Get(ctx, caSecretName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("context %s: the mesh CA: %w: run clustermesh enable --context %s again", t.Context, err, t.Context)
	}
	m.caSecret, m.caPEM = caSecret, caSecret.Data["ca.crt"]
	if m.ca, err = parseCert(m.caPEM); err != nil {
		return nil, fmt.Errorf("context %s: secret %s/%s: %w", t.Context, ns, caSecretName, err)
	}
	if m.remote, err = core.Secrets(ns).Get(ctx, remoteSecretName, metav1.GetOptions{}); err != nil {
		return nil, fmt.Errorf("context %s: %w: run clustermesh enable --context %s again", t.Context, err, t.Context)
	}
	server, err := core.Secrets(ns).Get(ctx, serverSecretName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("context %s: %w: run clustermesh enable --context %s again", t.Context, err, t.Context)
	}
	if m.server, err = parseCert(server.Data[corev1.TLSCertKey]); err != nil {
		return nil, fmt.Errorf("context %s: secret %s/%s: %w", t.Context, ns, serverSecretName, err)
	}
	if m.trustedCAs, err = trustedCAs(ctx, t, ns); err != nil {
		return nil, err
	}
	if rs, err := core.Secrets(ns).Get(ctx, remotesSecretName, metav1.GetOptions{}); err == nil {
		m.remotes = rs.Data
	} else if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("context %s: %w", t.Context, err)
	}

	nodes, err := core.Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("context %s: list nodes: %w", t.Context, err)
	}
	var firstNodeIP string
	for _, n := range nodes.Items {
		cidrs := n.Spec.PodCIDRs
		if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
			cidrs = []string{n.Spec.PodCIDR}
		}
		for _, c := range cidrs {
			if p, err := netip.ParsePrefix(c); err == nil {
				m.podCIDRs = append(m.podCIDRs, owned[netip.Prefix]{p.Masked(), n.Name})
			}
		}
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				m.nodeIPs = append(m.nodeIPs, owned[netip.Addr]{ip.Unmap(), n.Name})
				if firstNodeIP == "" && a.Type == corev1.NodeInternalIP {
					firstNodeIP = ip.String()
				}
			}
		}
	}

	if override != "" {
		m.endpoint = override
		return m, nil
	}
	svc, err := core.Services(ns).Get(ctx, apiserverName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("context %s: the apiserver service: %w: run clustermesh enable --context %s again", t.Context, err, t.Context)
	}
	switch svc.Spec.Type {
	case corev1.ServiceTypeLoadBalancer:
		for _, in := range svc.Status.LoadBalancer.Ingress {
			host := in.IP
			if host == "" {
				host = in.Hostname
			}
			if host != "" {
				m.endpoint = "https://" + net.JoinHostPort(host, strconv.Itoa(apiserverPort))
				break
			}
		}
		if m.endpoint == "" {
			m.whyNoEP = fmt.Sprintf("service %s/%s has no LoadBalancer address yet: wait for one (kubectl --context %s -n %s get service %s), or enable with --service-type NodePort, or pass the address with --destination-endpoint/--source-endpoint",
				ns, apiserverName, t.Context, ns, apiserverName)
		}
	case corev1.ServiceTypeNodePort:
		var port int32
		for _, p := range svc.Spec.Ports {
			if p.Port == apiserverPort {
				port = p.NodePort
			}
		}
		if port == 0 || firstNodeIP == "" {
			m.whyNoEP = fmt.Sprintf("service %s/%s is a NodePort but the cluster has no node with an InternalIP (or no node port): pass the address with --destination-endpoint/--source-endpoint", ns, apiserverName)
		} else {
			m.endpoint = "https://" + net.JoinHostPort(firstNodeIP, strconv.Itoa(int(port)))
		}
	default:
		m.whyNoEP = fmt.Sprintf("service %s/%s is of type %s: run clustermesh enable --context %s with --service-type LoadBalancer or NodePort", ns, apiserverName, svc.Spec.Type, t.Context)
	}
	return m, nil
}

func parseCert(p []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(p)
	if b == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// link is one direction of a connection: reader's agents read target.
type link struct{ reader, target *meshMember }

// links returns the directions a connection mode asks for.
func links(mode string, src *meshMember, dests []*meshMember) ([]link, error) {
	var out []link
	switch mode {
	case modeBidirectional:
		for _, d := range dests {
			out = append(out, link{src, d}, link{d, src})
		}
	case modeUnicast:
		for _, d := range dests {
			out = append(out, link{src, d})
		}
	case modeMesh:
		all := append([]*meshMember{src}, dests...)
		for _, a := range all {
			for _, b := range all {
				if a != b {
					out = append(out, link{a, b})
				}
			}
		}
	default:
		return nil, fmt.Errorf("--connection-mode %q: want %s, %s or %s", mode, modeBidirectional, modeUnicast, modeMesh)
	}
	return out, nil
}

// sameMeshCA reports whether two members have one CA.
func sameMeshCA(a, b *meshMember) bool {
	return bytes.Equal(a.ca.SubjectKeyId, b.ca.SubjectKeyId) && sameCA(a.ca, b.ca)
}

// preflight checks every pair of members and every link, and returns every
// problem at once, each with what to do about it. Different CAs are a
// problem unless allowMismatchingCA. A server certificate that does not name
// the address its peers dial is not: preflight loads the CA to re-issue it
// (reissueHost), and reports a CA it cannot load.
func preflight(members []*meshMember, ls []link, allowMismatchingCA bool) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for i, a := range members {
		for _, b := range members[i+1:] {
			if a.t.Context == b.t.Context {
				bad("context %s is given twice", a.t.Context)
				continue
			}
			if a.name == b.name {
				bad("contexts %s and %s are both cluster %q: every cluster of a mesh needs its own name (clustermesh enable --cluster-name)", a.t.Context, b.t.Context, a.name)
			}
			if a.id == b.id {
				bad("clusters %s and %s both have cluster id %d: every cluster of a mesh needs its own id (clustermesh enable --cluster-id)", a.name, b.name, a.id)
			}
			if a.max != b.max {
				bad("cluster %s has max-connected-clusters %d and %s %d: every cluster of a mesh needs the same (clustermesh enable --max-connected-clusters)", a.name, a.max, b.name, b.max)
			}
			if !sameMeshCA(a, b) && !allowMismatchingCA {
				bad("clusters %s and %s have different mesh CAs (subject key ids %x and %x): every cluster of a mesh needs the same CA: run clustermesh disable --delete-ca --context %s, then clustermesh enable --context %s --ca-from-context %s; or, to keep both CAs, pass --allow-mismatching-ca (each cluster's agents then get a client certificate from the other's CA: see SECURITY.md)",
					a.name, b.name, a.ca.SubjectKeyId, b.ca.SubjectKeyId, b.t.Context, b.t.Context, a.t.Context)
			}
			errs = append(errs, overlaps(a, b)...)
		}
	}
	for _, l := range ls {
		t := l.target
		if t.endpoint == "" {
			bad("cluster %s (context %s): no endpoint for its apiserver: %s", t.name, t.t.Context, t.whyNoEP)
			continue
		}
		u, err := url.Parse(t.endpoint)
		if err != nil || u.Scheme != "https" || u.Hostname() == "" || u.Port() == "" {
			bad("cluster %s: endpoint %q: want https://HOST:PORT", t.name, t.endpoint)
			continue
		}
		if t.server.VerifyHostname(u.Hostname()) == nil || t.reissueHost == u.Hostname() {
			continue
		}
		if t.reissueHost != "" {
			bad("cluster %s: endpoints %s and %s: give it one endpoint", t.name, t.reissueHost, u.Hostname())
			continue
		}
		mesh, err := caFromSecret(t.caSecret, "context "+t.t.Context)
		if err != nil {
			bad("cluster %s: its apiserver's server certificate does not name %s, the address its peers dial, and it cannot be re-issued: %v: run clustermesh enable --context %s --server-ip/--server-dns %s",
				t.name, u.Hostname(), err, t.t.Context, u.Hostname())
			continue
		}
		t.reissueHost, t.mesh = u.Hostname(), mesh
	}
	return errors.Join(errs...)
}

// overlaps reports pod CIDRs and node IPs that two clusters share: pods or
// nodes of one would be routed to the other.
func overlaps(a, b *meshMember) []error {
	var errs []error
	for _, pa := range a.podCIDRs {
		for _, pb := range b.podCIDRs {
			if pa.v.Overlaps(pb.v) {
				errs = append(errs, fmt.Errorf("pod CIDR %s of node %s in cluster %s overlaps pod CIDR %s of node %s in cluster %s: pods of both would get the same addresses; give every cluster its own pod CIDR range (its IPAM cluster pool) before connecting them",
					pa.v, pa.node, a.name, pb.v, pb.node, b.name))
			}
		}
	}
	for _, ia := range a.nodeIPs {
		for _, ib := range b.nodeIPs {
			if ia.v == ib.v {
				errs = append(errs, fmt.Errorf("node %s of cluster %s and node %s of cluster %s both have the address %s: every node of the mesh needs its own address",
					ia.node, a.name, ib.node, b.name, ia.v))
			}
		}
	}
	for _, x := range []struct{ m, o *meshMember }{{a, b}, {b, a}} {
		for _, ip := range x.m.nodeIPs {
			for _, p := range x.o.podCIDRs {
				if p.v.Contains(ip.v) {
					errs = append(errs, fmt.Errorf("node %s of cluster %s has the address %s, inside pod CIDR %s of node %s in cluster %s: node and pod addresses must not overlap across the mesh",
						ip.node, x.m.name, ip.v, p.v, p.node, x.o.name))
				}
			}
		}
	}
	return errs
}

type connectOptions struct {
	Context      string
	Destinations []string
	Namespace    string
	Mode         string
	DestEndpoint []string
	SrcEndpoint  string
	// AllowMismatchingCA connects clusters of different CAs: each reader
	// gets a client certificate of the CA of the cluster it reads, and
	// verifies that cluster with its CA (no apiserver trusts another CA).
	AllowMismatchingCA bool
}

func newConnectCmd() *cobra.Command {
	var kf kubeFlags
	var o connectOptions
	cmd := &cobra.Command{
		Use:   "connect --context A --destination-context B [--destination-context C ...]",
		Short: "Connect enabled Kubernetes clusters: each one's agents read the others' apiservers",
		Long: `Connect clusters enabled with 'clustermesh enable'. First every check, before
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

`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runConnect(cmd.Context(), &kf, o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	kf.register(f)
	f.StringVar(&o.Context, "context", "", "kubeconfig context of the source cluster (default: the current context)")
	f.StringArrayVar(&o.Destinations, "destination-context", nil, "kubeconfig context of a cluster to connect to (repeatable)")
	f.StringVar(&o.Namespace, "namespace", defaultKubeNamespace, "namespace of the mesh apiservers (the same in every cluster)")
	f.StringVar(&o.Mode, "connection-mode", modeBidirectional, "bidirectional, unicast or mesh")
	f.StringArrayVar(&o.DestEndpoint, "destination-endpoint", nil, "https://HOST:PORT of a destination's apiserver, instead of its Service's (repeatable, in the order of --destination-context)")
	f.StringVar(&o.SrcEndpoint, "source-endpoint", "", "https://HOST:PORT of the source's apiserver, instead of its Service's")
	f.BoolVar(&o.AllowMismatchingCA, "allow-mismatching-ca", false, "connect clusters whose mesh CAs differ: each cluster's agents get a client certificate of the other cluster's CA (no apiserver trusts another CA; see SECURITY.md)")
	cmd.MarkFlagRequired("destination-context")
	return cmd
}

// loadMembers reads the source and the destinations.
func loadMembers(ctx context.Context, kf *kubeFlags, o connectOptions) (*meshMember, []*meshMember, error) {
	if len(o.DestEndpoint) > 0 && len(o.DestEndpoint) != len(o.Destinations) {
		return nil, nil, fmt.Errorf("%d --destination-endpoint for %d --destination-context: give one per destination, in the same order", len(o.DestEndpoint), len(o.Destinations))
	}
	t, err := kf.target(o.Context)
	if err != nil {
		return nil, nil, err
	}
	src, err := loadMember(ctx, t, o.Namespace, o.SrcEndpoint)
	if err != nil {
		return nil, nil, err
	}
	var dests []*meshMember
	for i, d := range o.Destinations {
		dt, err := kf.target(d)
		if err != nil {
			return nil, nil, fmt.Errorf("--destination-context: %w", err)
		}
		ep := ""
		if len(o.DestEndpoint) > 0 {
			ep = o.DestEndpoint[i]
		}
		m, err := loadMember(ctx, dt, o.Namespace, ep)
		if err != nil {
			return nil, nil, err
		}
		dests = append(dests, m)
	}
	return src, dests, nil
}

func runConnect(ctx context.Context, kf *kubeFlags, o connectOptions, out io.Writer) error {
	src, dests, err := loadMembers(ctx, kf, o)
	if err != nil {
		return err
	}
	ls, err := links(o.Mode, src, dests)
	if err != nil {
		return err
	}
	members := append([]*meshMember{src}, dests...)
	if err := preflight(members, ls, o.AllowMismatchingCA); err != nil {
		return fmt.Errorf("not connecting, nothing was written:\n%w", err)
	}
	for _, m := range members {
		if m.reissueHost != "" {
			if err := reissueServer(ctx, m, m.reissueHost, out); err != nil {
				return err
			}
		}
	}
	for _, l := range ls {
		if err := setPeer(ctx, l.target, l.reader.name, true, out); err != nil {
			return err
		}
		var peer *peerCreds
		if !sameMeshCA(l.reader, l.target) {
			if peer, err = peerCredentials(ctx, l.reader, l.target, time.Now()); err != nil {
				return err
			}
		}
		// Trust in a peer's CA is never granted (a version before this
		// one granted it for mismatching CAs: taken back here).
		if err := removeTrustedCA(ctx, l.target, l.reader.name, out); err != nil {
			return err
		}
		if err := setRemote(ctx, l.reader, l.target.name, remoteConfig(l.reader, l.target), peer, out); err != nil {
			return err
		}
	}
	for _, m := range members {
		if err := applyAPIServer(ctx, m, out); err != nil {
			return err
		}
	}
	for _, l := range ls {
		fmt.Fprintf(out, "%s reads %s at %s\n", l.reader.name, l.target.name, l.target.endpoint)
	}
	return nil
}
