package kubemesh

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/meshapiserver"
)

// Keys of the remotes secret besides one config per remote cluster. They
// start with a dot: the agent takes every other file of its config directory
// for a remote's config.
const (
	remotesCAKey   = ".ca.crt"
	remotesCertKey = ".remote.crt"
	remotesKeyKey  = ".remote.key"
)

// peersFieldManager owns the peers key of the config map.
const peersFieldManager = "clustermesh-connect"

// With connect --allow-mismatching-ca, a reader whose CA is not target's
// reads target with credentials of target's CA alone, kept in its remotes
// secret beside target's config: target's CA (the reader's agents verify
// target's apiserver with it) and a client certificate remote-<reader>
// that target's CA issued. Target trusts no other CA: a peer's CA can mint
// no user of target's etcd.
func peerCAKey(target string) string   { return ".ca-" + target + ".crt" }
func peerCertKey(target string) string { return ".remote-" + target + ".crt" }
func peerKeyKey(target string) string  { return ".remote-" + target + ".key" }

// peerCreds are the credentials of target's CA a reader uses for it.
type peerCreds struct{ caPEM, certPEM, keyPEM []byte }

// trustedCAKey is the key of peer's CA in the trusted CAs configmap.
func trustedCAKey(peer string) string { return peer + ".crt" }

// remoteConfig is the etcd client config reader's agents use for target:
// the mesh CA when both have the same, else target's own CA.
func remoteConfig(reader, target *meshMember) []byte {
	rc := agentsync.RemoteConfig{Endpoints: []string{target.endpoint}, TrustedCAFile: remotesCAKey, CertFile: remotesCertKey, KeyFile: remotesKeyKey}
	if !sameMeshCA(reader, target) {
		rc.TrustedCAFile, rc.CertFile, rc.KeyFile = peerCAKey(target.name), peerCertKey(target.name), peerKeyKey(target.name)
	}
	b, _ := yaml.Marshal(rc)
	return b
}

// setRemote adds (cfg non-nil) or removes the config of remote in m's
// remotes secret, with credentials of remote's CA when it is not m's
// (peer non-nil), and records the change if there was one.
func setRemote(ctx context.Context, m *meshMember, remote string, cfg []byte, peer *peerCreds, steps *[]Step) error {
	secrets := m.t.Client.CoreV1().Secrets(m.ns)
	changed := false
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := secrets.Get(ctx, RemotesSecretName, metav1.GetOptions{})
		create := apierrors.IsNotFound(err)
		switch {
		case create && cfg == nil:
			return nil
		case create:
			s = &corev1.Secret{ObjectMeta: meta(RemotesSecretName, m.ns), Type: corev1.SecretTypeOpaque}
		case err != nil:
			return fmt.Errorf("reading: %w", err)
		}
		want := remotesData(m, s.Data, remote, cfg, peer)
		if !create && maps.EqualFunc(s.Data, want, bytes.Equal) {
			return nil
		}
		s.Data = want
		if create {
			_, err = secrets.Create(ctx, s, metav1.CreateOptions{FieldManager: fieldManager})
		} else {
			_, err = secrets.Update(ctx, s, metav1.UpdateOptions{FieldManager: fieldManager})
		}
		changed = err == nil
		return err
	})
	if err != nil {
		return fmt.Errorf("context %s: writing secret %s/%s: %w", m.t.Context, m.ns, RemotesSecretName, err)
	}
	if changed {
		*steps = append(*steps, RemoteChange{Cluster: m.name, Namespace: m.ns, Remote: remote, Reads: cfg != nil, WithRemoteCA: cfg != nil && peer != nil})
	}
	if cfg == nil {
		delete(m.remotes, remote)
	} else {
		if m.remotes == nil {
			m.remotes = map[string][]byte{}
		}
		m.remotes[remote] = cfg
	}
	return nil
}

// remotesData is the data of m's remotes secret (now data) with remote's
// config cfg (removed when nil) and its credentials.
func remotesData(m *meshMember, data map[string][]byte, remote string, cfg []byte, peer *peerCreds) map[string][]byte {
	want := maps.Clone(data)
	if want == nil {
		want = map[string][]byte{}
	}
	delete(want, peerCAKey(remote))
	delete(want, peerCertKey(remote))
	delete(want, peerKeyKey(remote))
	if cfg == nil {
		delete(want, remote)
		return want
	}
	want[remote] = cfg
	want[remotesCAKey] = m.caPEM
	want[remotesCertKey] = m.remote.Data[corev1.TLSCertKey]
	want[remotesKeyKey] = m.remote.Data[corev1.TLSPrivateKeyKey]
	if peer != nil {
		want[peerCAKey(remote)] = peer.caPEM
		want[peerCertKey(remote)] = peer.certPEM
		want[peerKeyKey(remote)] = peer.keyPEM
	}
	return want
}

// setPeer allows (add) or stops allowing peer to read m: the config map's
// peers; applyAPIServer then passes them to the apiserver (--peer).
func setPeer(ctx context.Context, m *meshMember, peer string, add bool, steps *[]Step) error {
	peers := slices.DeleteFunc(slices.Clone(m.peers), func(p string) bool { return p == peer })
	if add {
		peers = append(peers, peer)
	}
	slices.Sort(peers)
	if slices.Equal(peers, m.peers) {
		return nil
	}
	// The peers key has its own field manager: enable's apply of the
	// config map (which leaves it out) neither removes nor conflicts with it.
	cm := &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: MeshConfigName, Namespace: m.ns},
		Data:       map[string]string{cfgPeers: strings.Join(peers, ",")},
	}
	if err := m.apply(ctx, cm, peersFieldManager, steps); err != nil {
		return err
	}
	m.peers = peers
	if add {
		m.changes = append(m.changes, "allows "+peer+" to read it")
	} else {
		m.changes = append(m.changes, "no longer allows "+peer)
	}
	return nil
}

// removeTrustedCA takes back the trust an earlier version gave m's
// apiserver in peer's CA (configmap clustermesh-trusted-cas, read at start
// with --trusted-ca-dir): connect no longer grants it.
func removeTrustedCA(ctx context.Context, m *meshMember, peer string, steps *[]Step) error {
	key := trustedCAKey(peer)
	if _, ok := m.trustedCAs[key]; !ok {
		return nil
	}
	cms := m.t.Client.CoreV1().ConfigMaps(m.ns)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := cms.Get(ctx, TrustedCAsName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading: %w", err)
		}
		delete(cm.Data, key)
		if _, err = cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: fieldManager}); err == nil {
			m.trustedCAs = cm.Data
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("context %s: writing configmap %s/%s: %w", m.t.Context, m.ns, TrustedCAsName, err)
	}
	*steps = append(*steps, TrustRevoked{Cluster: m.name, Namespace: m.ns, Peer: peer})
	m.changes = append(m.changes, "no longer trusts the CA of "+peer)
	return nil
}

// reissueServer re-issues m's server certificate with the names it has
// plus host, the address its peers dial (preflight checked m.mesh).
func reissueServer(ctx context.Context, m *meshMember, host string, steps *[]Step) error {
	r := certRequest{Secret: ServerSecretName, CN: m.server.Subject.CommonName, Usage: ca.ServerAuth,
		DNSNames: slices.Clone(m.server.DNSNames), IPs: slices.Clone(m.server.IPAddresses)}
	if ip := net.ParseIP(host); ip != nil {
		r.IPs = append(r.IPs, ip)
	} else {
		r.DNSNames = append(r.DNSNames, host)
	}
	s, err := r.issue(m.mesh, m.ns)
	if err != nil {
		return fmt.Errorf("context %s: re-issuing the server certificate: %w", m.t.Context, err)
	}
	if err := m.apply(ctx, s, fieldManager, steps); err != nil {
		return err
	}
	if m.server, err = parseCert(s.Data[corev1.TLSCertKey]); err != nil {
		return fmt.Errorf("context %s: parsing the re-issued server certificate: %w", m.t.Context, err)
	}
	m.serverSecret = s
	*steps = append(*steps, CertReissued{Cluster: m.name, Namespace: m.ns, Host: host})
	m.changes = append(m.changes, "its server certificate names "+host)
	return nil
}

// applyAPIServer applies m's Deployment as enable made it, with what
// connect or disconnect changed (peers, trusted CAs, certificates), which
// restarts the apiserver: it reads them only when it starts.
func applyAPIServer(ctx context.Context, m *meshMember, steps *[]Step) error {
	if len(m.changes) == 0 {
		return nil
	}
	d, err := m.t.Client.AppsV1().Deployments(m.ns).Get(ctx, APIServerName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("context %s: reading deployment %s/%s: %w: run clustermesh enable --context %s again", m.t.Context, m.ns, APIServerName, err, m.t.Context)
	}
	c := meshCluster{Namespace: m.ns, Name: m.name, ID: m.id, MaxConnected: m.max, Image: DefaultImage,
		ServiceType: corev1.ServiceType(m.configMap.Data[cfgServiceType]), Peers: m.peers, TrustedCAs: m.trustedCAs}
	for _, ct := range d.Spec.Template.Spec.Containers {
		if ct.Name == "apiserver" {
			c.Image = ct.Image
		}
	}
	hash := d.Spec.Template.Annotations[certsHashAnnotation]
	if m.serverSecret != nil {
		admin, err := m.t.Client.CoreV1().Secrets(m.ns).Get(ctx, AdminSecretName, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("context %s: reading secret %s/%s: %w: run clustermesh enable --context %s again", m.t.Context, m.ns, AdminSecretName, err, m.t.Context)
		}
		hash = certsHash(m.serverSecret, admin)
	}
	if err := m.apply(ctx, deploymentObject(c, hash), fieldManager, steps); err != nil {
		return err
	}
	*steps = append(*steps, APIServerRestart{Cluster: m.name, Reasons: m.changes, Peers: slices.Clone(m.peers)})
	m.changes = nil
	return nil
}

// peerCredentials returns the credentials of target's CA for reader: the
// client certificate already in reader's remotes secret when it is still
// good (target's CA signed it for remote-<reader>, for clients, and it does
// not expire within renewBefore), else a new one. It needs target's CA key
// (the clustermesh-ca secret enable wrote).
func peerCredentials(ctx context.Context, reader, target *meshMember, now time.Time) (*peerCreds, error) {
	mesh, err := caFromSecret(target.caSecret, "context "+target.t.Context)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: a certificate of its CA for %s's agents: %w", target.name, reader.name, err)
	}
	cn := meshapiserver.RemoteUser(reader.name)
	s, err := reader.t.Client.CoreV1().Secrets(reader.ns).Get(ctx, RemotesSecretName, metav1.GetOptions{})
	if err == nil {
		certPEM, keyPEM := s.Data[peerCertKey(target.name)], s.Data[peerKeyKey(target.name)]
		if block, _ := pem.Decode(certPEM); block != nil && len(keyPEM) > 0 {
			cert, err := x509.ParseCertificate(block.Bytes)
			if err == nil && cert.Subject.CommonName == cn && cert.NotAfter.Sub(now) > renewBefore &&
				ca.Verify(cert, mesh.CA.Pool(), ca.ClientAuth, now) == nil {
				return &peerCreds{caPEM: mesh.CertPEM, certPEM: certPEM, keyPEM: keyPEM}, nil
			}
		}
	} else if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("context %s: reading secret %s/%s: %w", reader.t.Context, reader.ns, RemotesSecretName, err)
	}
	issued, err := mesh.CA.Issue(ca.Request{CommonName: cn, Usage: ca.ClientAuth})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: issuing %s: %w", target.name, cn, err)
	}
	return &peerCreds{caPEM: mesh.CertPEM, certPEM: issued.CertPEM, keyPEM: issued.KeyPEM}, nil
}
