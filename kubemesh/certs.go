package kubemesh

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/clustermesh/clustermesh/ca"
)

// renewBefore: a certificate that expires sooner is re-issued by enable.
const renewBefore = 30 * 24 * time.Hour

// meshCA is the mesh CA with its PEM encodings (the form secrets hold).
type meshCA struct {
	CA              *ca.CA
	CertPEM, KeyPEM []byte
}

// loadCAPEM checks a CA certificate and key (ca.Load's checks: key matches,
// a CA, valid now) through a private temporary directory.
func loadCAPEM(certPEM, keyPEM []byte, from string) (*meshCA, error) {
	dir, err := os.MkdirTemp("", "clustermesh-ca-")
	if err != nil {
		return nil, fmt.Errorf("checking the mesh CA from %s: %w", from, err)
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, ca.CertFile), certPEM, 0o600); err != nil {
		return nil, fmt.Errorf("checking the mesh CA from %s: %w", from, err)
	}
	if err := os.WriteFile(filepath.Join(dir, ca.KeyFile), keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("checking the mesh CA from %s: %w", from, err)
	}
	c, err := ca.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("the mesh CA from %s: %w", from, err)
	}
	return &meshCA{CA: c, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// loadCADir reads ca.crt and ca.key from a directory ('clustermesh ca create').
func loadCADir(dir string) (*meshCA, error) {
	c, err := ca.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("loading the mesh CA from %s: %w", dir, err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, ca.KeyFile))
	if err != nil {
		return nil, fmt.Errorf("reading the mesh CA's key: %w", err)
	}
	return &meshCA{CA: c, CertPEM: c.CertPEM(), KeyPEM: keyPEM}, nil
}

// newMeshCA creates a CA and its PEM encodings.
func newMeshCA() (*meshCA, error) {
	c, err := ca.New("clustermesh CA", 10*365*24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("creating the mesh CA: %w", err)
	}
	dir, err := os.MkdirTemp("", "clustermesh-ca-")
	if err != nil {
		return nil, fmt.Errorf("encoding the new mesh CA: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := c.Save(filepath.Join(dir, "ca")); err != nil {
		return nil, fmt.Errorf("encoding the new mesh CA: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca", ca.KeyFile))
	if err != nil {
		return nil, fmt.Errorf("encoding the new mesh CA: %w", err)
	}
	return &meshCA{CA: c, CertPEM: c.CertPEM(), KeyPEM: keyPEM}, nil
}

// caFromSecret reads the mesh CA from a clustermesh-ca secret.
func caFromSecret(s *corev1.Secret, from string) (*meshCA, error) {
	certPEM, keyPEM := s.Data["ca.crt"], s.Data["ca.key"]
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return nil, fmt.Errorf("secret %s/%s in %s holds no ca.crt and ca.key", s.Namespace, s.Name, from)
	}
	return loadCAPEM(certPEM, keyPEM, from)
}

// sameCA reports whether two CA certificates are one CA (same subject key
// and public key).
func sameCA(a, b *x509.Certificate) bool {
	return bytes.Equal(a.RawSubjectPublicKeyInfo, b.RawSubjectPublicKeyInfo) && bytes.Equal(a.RawSubject, b.RawSubject)
}

// certRequest is a certificate enable wants in a secret.
type certRequest struct {
	Secret   string
	CN       string
	Usage    ca.Usage
	DNSNames []string
	IPs      []net.IP
}

// reuse reports whether the secret's certificate still fits r: signed by
// m, valid for longer than renewBefore, the same common name, and (for a
// server) naming at least r's names and addresses. It says why not.
func (r certRequest) reuse(s *corev1.Secret, m *meshCA, now time.Time) (bool, string) {
	if s == nil {
		return false, "new"
	}
	block, _ := pem.Decode(s.Data[corev1.TLSCertKey])
	if block == nil || len(s.Data[corev1.TLSPrivateKeyKey]) == 0 {
		return false, "no certificate in the secret"
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return false, "unparseable certificate"
	}
	if err := ca.Verify(cert, m.CA.Pool(), r.Usage, now); err != nil {
		return false, "not valid with the mesh CA"
	}
	if cert.NotAfter.Sub(now) < renewBefore {
		return false, "expires " + cert.NotAfter.Format(time.DateOnly)
	}
	if cert.Subject.CommonName != r.CN {
		return false, "common name " + cert.Subject.CommonName
	}
	if !bytes.Equal(s.Data["ca.crt"], m.CertPEM) {
		return false, "another ca.crt"
	}
	for _, d := range r.DNSNames {
		if !slices.Contains(cert.DNSNames, d) {
			return false, "does not name " + d
		}
	}
	for _, ip := range r.IPs {
		if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
			return false, "does not name " + ip.String()
		}
	}
	return true, ""
}

// issue issues r's certificate from m into a TLS secret.
func (r certRequest) issue(m *meshCA, ns string) (*corev1.Secret, error) {
	i, err := m.CA.Issue(ca.Request{CommonName: r.CN, DNSNames: r.DNSNames, IPs: r.IPs, Usage: r.Usage})
	if err != nil {
		return nil, fmt.Errorf("issuing the certificate %s of secret %s: %w", r.CN, r.Secret, err)
	}
	return tlsSecret(r.Secret, ns, i.CertPEM, i.KeyPEM, m.CertPEM), nil
}

// certsHash fingerprints the certificates the apiserver mounts.
func certsHash(secrets ...*corev1.Secret) string {
	h := sha256.New()
	for _, s := range secrets {
		h.Write(s.Data[corev1.TLSCertKey])
		h.Write(s.Data["ca.crt"])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// trustedCAsHash fingerprints the trusted peer CAs (peer → PEM).
func trustedCAsHash(cas map[string]string) string {
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(cas)) {
		h.Write([]byte(k))
		h.Write([]byte(cas[k]))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// parseCert parses the first PEM certificate of p.
func parseCert(p []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(p)
	if b == nil {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}
