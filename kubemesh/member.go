package kubemesh

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// meshMember is an enabled cluster as connect and disconnect see it.
type meshMember struct {
	t         *Target
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
	applier      *applier // made on first use
}

// owned is an address or prefix and the node it belongs to.
type owned[T any] struct {
	v    T
	node string
}

// loadMember reads an enabled cluster: its config, CA, certificates, nodes
// and apiserver endpoint (override, when given, is the endpoint to use).
func loadMember(ctx context.Context, t *Target, ns, override string) (*meshMember, error) {
	m := &meshMember{t: t, ns: ns}
	if err := m.loadConfig(ctx); err != nil {
		return nil, err
	}
	if err := m.loadSecrets(ctx); err != nil {
		return nil, err
	}
	firstNodeIP, err := m.loadNodes(ctx)
	if err != nil {
		return nil, err
	}
	if override != "" {
		m.endpoint = override
		return m, nil
	}
	return m, m.findEndpoint(ctx, firstNodeIP)
}

// loadConfig reads the cluster's name, id, mesh size and peers from its
// config map.
func (m *meshMember) loadConfig(ctx context.Context) error {
	t, ns := m.t, m.ns
	cm, err := t.Client.CoreV1().ConfigMaps(ns).Get(ctx, MeshConfigName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("context %s has no mesh apiserver (no configmap %s/%s): run clustermesh enable --context %s first", t.Context, ns, MeshConfigName, t.Context)
	} else if err != nil {
		return fmt.Errorf("context %s: reading configmap %s/%s: %w", t.Context, ns, MeshConfigName, err)
	}
	m.configMap = cm
	m.name = cm.Data[cfgClusterName]
	id, err1 := strconv.ParseUint(cm.Data[cfgClusterID], 10, 32)
	max, err2 := strconv.ParseUint(cm.Data[cfgMaxConnected], 10, 32)
	if m.name == "" || err1 != nil || err2 != nil {
		return fmt.Errorf("context %s: configmap %s/%s is incomplete (%v): run clustermesh enable --context %s again", t.Context, ns, MeshConfigName, cm.Data, t.Context)
	}
	m.id, m.max = uint32(id), uint32(max)
	m.peers = splitList(cm.Data[cfgPeers])
	return nil
}

// loadSecrets reads the mesh CA, the remote and server certificates, the
// trusted peer CAs and the remotes the cluster's agents read.
func (m *meshMember) loadSecrets(ctx context.Context) error {
	t, ns := m.t, m.ns
	secrets := t.Client.CoreV1().Secrets(ns)
	get := func(name string) (*corev1.Secret, error) {
		s, err := secrets.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("context %s: reading secret %s/%s: %w: run clustermesh enable --context %s again", t.Context, ns, name, err, t.Context)
		}
		return s, nil
	}
	var err error
	if m.caSecret, err = get(CASecretName); err != nil {
		return err
	}
	m.caPEM = m.caSecret.Data["ca.crt"]
	if m.ca, err = parseCert(m.caPEM); err != nil {
		return fmt.Errorf("context %s: parsing the CA of secret %s/%s: %w", t.Context, ns, CASecretName, err)
	}
	if m.remote, err = get(RemoteSecretName); err != nil {
		return err
	}
	server, err := get(ServerSecretName)
	if err != nil {
		return err
	}
	if m.server, err = parseCert(server.Data[corev1.TLSCertKey]); err != nil {
		return fmt.Errorf("context %s: parsing the certificate of secret %s/%s: %w", t.Context, ns, ServerSecretName, err)
	}
	if m.trustedCAs, err = trustedCAs(ctx, t, ns); err != nil {
		return err
	}
	if rs, err := secrets.Get(ctx, RemotesSecretName, metav1.GetOptions{}); err == nil {
		m.remotes = rs.Data
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("context %s: reading secret %s/%s: %w", t.Context, ns, RemotesSecretName, err)
	}
	return nil
}

// loadNodes reads the nodes' pod CIDRs and addresses, and returns the
// first InternalIP (a NodePort's endpoint).
func (m *meshMember) loadNodes(ctx context.Context) (string, error) {
	nodes, err := m.t.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("context %s: listing nodes: %w", m.t.Context, err)
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
	return firstNodeIP, nil
}

// findEndpoint sets the endpoint peers dial from the apiserver's Service,
// or says why there is none (whyNoEP).
func (m *meshMember) findEndpoint(ctx context.Context, firstNodeIP string) error {
	t, ns := m.t, m.ns
	svc, err := t.Client.CoreV1().Services(ns).Get(ctx, APIServerName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("context %s: reading the apiserver service: %w: run clustermesh enable --context %s again", t.Context, err, t.Context)
	}
	switch svc.Spec.Type {
	case corev1.ServiceTypeLoadBalancer:
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if host := orDefault(in.IP, in.Hostname); host != "" {
				m.endpoint = "https://" + net.JoinHostPort(host, strconv.Itoa(apiserverPort))
				return nil
			}
		}
		m.whyNoEP = fmt.Sprintf("service %s/%s has no LoadBalancer address yet: wait for one (kubectl --context %s -n %s get service %s), or enable with --service-type NodePort, or pass the address with --destination-endpoint/--source-endpoint",
			ns, APIServerName, t.Context, ns, APIServerName)
	case corev1.ServiceTypeNodePort:
		var port int32
		for _, p := range svc.Spec.Ports {
			if p.Port == apiserverPort {
				port = p.NodePort
			}
		}
		if port == 0 || firstNodeIP == "" {
			m.whyNoEP = fmt.Sprintf("service %s/%s is a NodePort but the cluster has no node with an InternalIP (or no node port): pass the address with --destination-endpoint/--source-endpoint", ns, APIServerName)
		} else {
			m.endpoint = "https://" + net.JoinHostPort(firstNodeIP, strconv.Itoa(int(port)))
		}
	default:
		m.whyNoEP = fmt.Sprintf("service %s/%s is of type %s: run clustermesh enable --context %s with --service-type LoadBalancer or NodePort", ns, APIServerName, svc.Spec.Type, t.Context)
	}
	return nil
}

// apply applies obj to m's cluster as manager, and records the change.
func (m *meshMember) apply(ctx context.Context, obj runtime.Object, manager string, steps *[]Step) error {
	if m.applier == nil {
		a, err := newApplier(m.t, m.name)
		if err != nil {
			return err
		}
		m.applier = a
	}
	c, err := m.applier.applyAs(ctx, obj, manager)
	if err != nil {
		return fmt.Errorf("context %s: %w", m.t.Context, err)
	}
	*steps = append(*steps, c)
	return nil
}
