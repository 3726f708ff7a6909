package kubemesh

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/wire"
)

// EnableOptions say which cluster Enable deploys a mesh apiserver in, and
// how. The zero value of a field with a default is that default.
type EnableOptions struct {
	Kubeconfig string // the kubeconfig file ("": $KUBECONFIG, else ~/.kube/config)
	Context    string // the cluster's kubeconfig context ("": the current one)
	Namespace  string // of the mesh apiserver (default DefaultNamespace)

	ClusterName  string // the cluster's name in the mesh
	ClusterID    uint32 // 1..MaxConnected, unique in the mesh
	MaxConnected uint32 // the mesh size, 255 (the default) or 511, the same on every cluster
	ServiceType  string // of the apiserver's Service: LoadBalancer (the default) or NodePort, in any case
	Image        string // with the clustermesh binary (default DefaultImage)

	// The mesh CA, when the cluster has none yet: from a directory
	// ('clustermesh ca create'), or from another enabled cluster's context;
	// else a new one. A cluster holding another CA is refused.
	CADir, CAFromContext string
	// ServerDNS and ServerIPs are extra names of the server certificate.
	ServerDNS, ServerIPs []string
	// DryRun writes nothing: the result's Planned holds the objects.
	DryRun bool
	// EndpointSlices also deploys 'clustermesh slices' (remote backends as
	// EndpointSlices, and the MCS API controller): its ServiceAccount, RBAC
	// and a Deployment of two replicas reading the remotes secret, as
	// 'clustermesh manifests --slices' prints them. Without it an existing
	// writer is left as it is (Disable removes it).
	EndpointSlices bool
	// ClusterSetIPRange is the writer's --clusterset-ip-range (with
	// EndpointSlices; empty: Kubernetes allocates ClusterSetIPs).
	ClusterSetIPRange string
}

func (o EnableOptions) withDefaults() EnableOptions {
	o.Namespace = orDefault(o.Namespace, DefaultNamespace)
	o.MaxConnected = orDefault(o.MaxConnected, wire.DefaultMaxConnectedClusters)
	o.ServiceType = orDefault(o.ServiceType, string(corev1.ServiceTypeLoadBalancer))
	o.Image = orDefault(o.Image, DefaultImage)
	return o
}

// Validate checks the options without a request to any cluster.
func (o EnableOptions) Validate() error {
	_, _, err := o.withDefaults().parse()
	return err
}

// parse validates o (with defaults) and returns its service type and
// extra server addresses.
func (o EnableOptions) parse() (corev1.ServiceType, []net.IP, error) {
	if err := wire.ValidateClusterName(o.ClusterName); err != nil {
		return "", nil, fmt.Errorf("--cluster-name: %w", err)
	}
	if err := wire.ValidateClusterID(o.ClusterName, o.ClusterID, o.MaxConnected); err != nil {
		return "", nil, fmt.Errorf("--cluster-id/--max-connected-clusters: %w", err)
	}
	if o.ClusterSetIPRange != "" {
		if !o.EndpointSlices {
			return "", nil, fmt.Errorf("--clusterset-ip-range is the slices writer's: give --endpoint-slices too")
		}
		if _, err := netip.ParsePrefix(o.ClusterSetIPRange); err != nil {
			return "", nil, fmt.Errorf("--clusterset-ip-range %q: %w (want a CIDR such as 10.96.128.0/20)", o.ClusterSetIPRange, err)
		}
	}
	if o.CADir != "" && o.CAFromContext != "" {
		return "", nil, fmt.Errorf("--ca-dir and --ca-from-context: give one of them")
	}
	var svcType corev1.ServiceType
	switch strings.ToLower(o.ServiceType) {
	case "loadbalancer":
		svcType = corev1.ServiceTypeLoadBalancer
	case "nodeport":
		svcType = corev1.ServiceTypeNodePort
	default:
		return "", nil, fmt.Errorf("--service-type %q: want LoadBalancer or NodePort", o.ServiceType)
	}
	var ips []net.IP
	for _, s := range o.ServerIPs {
		ip := net.ParseIP(s)
		if ip == nil {
			return "", nil, fmt.Errorf("--server-ip %q is not an IP address", s)
		}
		ips = append(ips, ip)
	}
	return svcType, ips, nil
}

// EnableResult is what Enable did.
type EnableResult struct {
	Context   string // the context enabled
	Namespace string
	// Objects are the objects applied, in order (none in a dry run).
	Objects []ObjectChange
	// Reissued are the certificates that were there and were issued again,
	// each with why the old one did not do.
	Reissued []Reissue
	// NewCA: the cluster had no mesh CA and none was given: Enable created
	// one, which the other clusters of the mesh must take (CAFromContext).
	NewCA bool
	// Warnings say what the caller should know of the result.
	Warnings []string
	// Planned are the objects a dry run would apply, in order, private keys
	// included (WriteYAML redacts them).
	Planned []runtime.Object
}

// Reissue is a certificate issued again, and why.
type Reissue struct {
	Secret string
	Reason string
}

// Enable deploys the cluster's mesh apiserver, or brings it to what o asks
// for: it keeps the objects and certificates that are right already, so
// that a second run changes nothing. The objects are applied in order; an
// error leaves those before it applied.
func Enable(ctx context.Context, o EnableOptions) (EnableResult, error) {
	o = o.withDefaults()
	svcType, extraIPs, err := o.parse()
	if err != nil {
		return EnableResult{}, err
	}
	t, err := Open(o.Kubeconfig, o.Context)
	if err != nil {
		return EnableResult{}, err
	}
	res := EnableResult{Context: t.Context, Namespace: o.Namespace}
	c, existing, err := readEnabled(ctx, t, o, svcType)
	if err != nil {
		return res, err
	}
	mesh, err := enableCA(ctx, t, o, existing[CASecretName])
	if err != nil {
		return res, err
	}
	res.NewCA = mesh == nil
	if mesh == nil {
		if mesh, err = newMeshCA(); err != nil {
			return res, err
		}
	}
	// The namespace and the Service come first (unless this is a dry run),
	// so that the server certificate names the service's cluster IP and
	// node port addresses from the start.
	// The MCS API's CRDs come before the apiserver, which reads
	// ServiceExports if its cluster serves them when it starts.
	crds, err := mcsCRDObjects()
	if err != nil {
		return res, err
	}
	early := append(crds, namespaceObject(c.Namespace), serviceObject(c))
	var a *applier
	if !o.DryRun {
		if a, err = newApplier(t, ""); err != nil {
			return res, err
		}
		if err := res.apply(ctx, a, early); err != nil {
			return res, err
		}
	}
	secrets, err := res.certificates(ctx, t, o, c, mesh, existing, extraIPs)
	if err != nil {
		return res, err
	}
	objs := append(apiserverObjects(c, mesh, secrets), deploymentObject(c, certsHash(secrets[0], secrets[1])))
	if o.EndpointSlices {
		// The MCS API's CRDs are in early already.
		objs = append(objs, slicesWriterObjects(c, o.ClusterSetIPRange)...)
	}
	if o.DryRun {
		res.Planned = append(early, objs...)
		return res, nil
	}
	if err := res.apply(ctx, a, objs); err != nil {
		return res, err
	}
	if svcType == corev1.ServiceTypeNodePort {
		res.Warnings = append(res.Warnings, "NodePort: peers' agents dial a node IP of this cluster on the service's node port: every node IP must be reachable from every peer node")
	}
	return res, nil
}

// apply applies objs in order, recording each change.
func (res *EnableResult) apply(ctx context.Context, a *applier, objs []runtime.Object) error {
	for _, obj := range objs {
		c, err := a.apply(ctx, obj)
		if err != nil {
			return fmt.Errorf("context %s: %w", res.Context, err)
		}
		res.Objects = append(res.Objects, c)
	}
	return nil
}

// readEnabled reads what the cluster holds already: its certificate
// secrets (by name) and, from its config, its peers, which the cluster
// to enable keeps. A connected cluster's name and id cannot change.
func readEnabled(ctx context.Context, t *Target, o EnableOptions, svcType corev1.ServiceType) (meshCluster, map[string]*corev1.Secret, error) {
	ns := o.Namespace
	cs := t.Client.CoreV1()
	existing := map[string]*corev1.Secret{}
	for _, name := range []string{CASecretName, ServerSecretName, AdminSecretName, RemoteSecretName} {
		s, err := cs.Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return meshCluster{}, nil, fmt.Errorf("context %s: reading secret %s/%s: %w", t.Context, ns, name, err)
		default:
			existing[name] = s
		}
	}
	c := meshCluster{Namespace: ns, Name: o.ClusterName, ID: o.ClusterID, MaxConnected: o.MaxConnected, ServiceType: svcType, Image: o.Image}
	if cm, err := cs.ConfigMaps(ns).Get(ctx, MeshConfigName, metav1.GetOptions{}); err == nil {
		c.Peers = splitList(cm.Data[cfgPeers])
		oldName, oldID := cm.Data[cfgClusterName], cm.Data[cfgClusterID]
		if len(c.Peers) > 0 && (oldName != o.ClusterName || oldID != strconv.FormatUint(uint64(o.ClusterID), 10)) {
			return c, nil, fmt.Errorf("context %s is enabled as cluster %s (id %s) and connected to %s: its name and id cannot change while connected; run clustermesh disconnect first",
				t.Context, oldName, oldID, strings.Join(c.Peers, ", "))
		}
	} else if !apierrors.IsNotFound(err) {
		return c, nil, fmt.Errorf("context %s: reading configmap %s/%s: %w", t.Context, ns, MeshConfigName, err)
	}
	var err error
	c.TrustedCAs, err = trustedCAs(ctx, t, ns)
	return c, existing, err
}

// enableCA returns the mesh CA: given (a directory or another cluster's),
// or the one the cluster holds (cur), which must be the one given; nil when
// there is none, for a new one.
func enableCA(ctx context.Context, t *Target, o EnableOptions, cur *corev1.Secret) (*meshCA, error) {
	var mesh *meshCA
	var err error
	switch {
	case o.CADir != "":
		if mesh, err = loadCADir(o.CADir); err != nil {
			return nil, fmt.Errorf("--ca-dir: %w", err)
		}
	case o.CAFromContext != "":
		other, err := Open(o.Kubeconfig, o.CAFromContext)
		if err != nil {
			return nil, fmt.Errorf("--ca-from-context: %w", err)
		}
		s, err := other.Client.CoreV1().Secrets(o.Namespace).Get(ctx, CASecretName, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("--ca-from-context %s: reading secret %s/%s: %w (enable that cluster first)", o.CAFromContext, o.Namespace, CASecretName, err)
		}
		if mesh, err = caFromSecret(s, "context "+o.CAFromContext); err != nil {
			return nil, err
		}
	}
	if cur == nil {
		return mesh, nil
	}
	here, err := caFromSecret(cur, "context "+t.Context)
	if err != nil {
		return nil, fmt.Errorf("%w: fix or delete the secret (clustermesh disable --delete-ca)", err)
	}
	if mesh == nil {
		return here, nil
	}
	if !sameCA(mesh.CA.Cert, here.CA.Cert) {
		return nil, fmt.Errorf("context %s already holds another mesh CA (%q) in secret %s/%s: every cluster of a mesh needs the same CA; to replace it, run clustermesh disable --delete-ca --context %s first",
			t.Context, here.CA.Cert.Subject.CommonName, o.Namespace, CASecretName, t.Context)
	}
	return mesh, nil
}

// certificates returns the secrets of the server, admin and remote
// certificates: kept when still right, else issued (Reissued says why an
// existing one was not kept).
func (res *EnableResult) certificates(ctx context.Context, t *Target, o EnableOptions, c meshCluster, mesh *meshCA, existing map[string]*corev1.Secret, extraIPs []net.IP) ([]*corev1.Secret, error) {
	dnsNames, ips, err := serverNames(ctx, t, c.Namespace, c.ServiceType, o.ServerDNS, extraIPs)
	if err != nil {
		return nil, err
	}
	reqs := []certRequest{
		{Secret: ServerSecretName, CN: "clustermesh-apiserver." + c.Name, Usage: ca.ServerAuth, DNSNames: dnsNames, IPs: ips},
		{Secret: AdminSecretName, CN: "admin-" + c.Name, Usage: ca.ClientAuth},
		{Secret: RemoteSecretName, CN: "remote-" + c.Name, Usage: ca.ClientAuth},
	}
	now := time.Now()
	var out []*corev1.Secret
	for _, r := range reqs {
		cur := existing[r.Secret]
		if ok, why := r.reuse(cur, mesh, now); ok {
			out = append(out, tlsSecret(r.Secret, c.Namespace, cur.Data[corev1.TLSCertKey], cur.Data[corev1.TLSPrivateKeyKey], mesh.CertPEM))
			continue
		} else if cur != nil {
			res.Reissued = append(res.Reissued, Reissue{Secret: r.Secret, Reason: why})
		}
		s, err := r.issue(mesh, c.Namespace)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// apiserverObjects are the objects of c's apiserver after its namespace
// and Service, but for its Deployment: RBAC, the CA and certificate
// secrets, the config.
func apiserverObjects(c meshCluster, mesh *meshCA, certSecrets []*corev1.Secret) []runtime.Object {
	objs := []runtime.Object{
		serviceAccountObject(c), clusterRoleObject(c), clusterRoleBindingObject(c), roleObject(c), roleBindingObject(c),
		caSecretObject(c.Namespace, mesh.CertPEM, mesh.KeyPEM),
	}
	for _, s := range certSecrets {
		objs = append(objs, s)
	}
	return append(objs, meshConfigObject(c))
}

// serverNames are the DNS names and addresses the server certificate must
// name: the service's in-cluster names, loopback, the cluster IP, the
// LoadBalancer ingress or (NodePort) every node's addresses, and extras.
func serverNames(ctx context.Context, t *Target, ns string, svcType corev1.ServiceType, extraDNS []string, extraIPs []net.IP) ([]string, []net.IP, error) {
	dns := []string{"localhost", APIServerName, APIServerName + "." + ns, APIServerName + "." + ns + ".svc",
		APIServerName + "." + ns + ".svc.cluster.local"}
	dns = append(dns, extraDNS...)
	ips := append([]net.IP{net.IPv4(127, 0, 0, 1)}, extraIPs...)
	addIP := func(s string) {
		if ip := net.ParseIP(s); ip != nil {
			ips = append(ips, ip)
		}
	}
	svc, err := t.Client.CoreV1().Services(ns).Get(ctx, APIServerName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, nil, fmt.Errorf("context %s: reading service %s/%s: %w", t.Context, ns, APIServerName, err)
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
			return nil, nil, fmt.Errorf("context %s: listing nodes: %w", t.Context, err)
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

// trustedCAs reads the peers' CAs the apiserver accepts (peer → PEM), nil
// when there are none.
func trustedCAs(ctx context.Context, t *Target, ns string) (map[string]string, error) {
	cm, err := t.Client.CoreV1().ConfigMaps(ns).Get(ctx, TrustedCAsName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("context %s: reading configmap %s/%s: %w", t.Context, ns, TrustedCAsName, err)
	}
	return cm.Data, nil
}
