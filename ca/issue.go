package ca

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// DefaultValidity is the validity of an issued certificate when the request
// leaves it zero.
const DefaultValidity = 365 * 24 * time.Hour

// Usage is what an issued certificate is for: its extended key usage.
type Usage int

// Usages. The zero Usage is invalid, so a request must choose one.
const (
	ServerAuth Usage = iota + 1 // TLS server (etcd listener)
	ClientAuth                  // TLS client (etcd user)
)

// String returns "server-auth" or "client-auth".
func (u Usage) String() string {
	switch u {
	case ServerAuth:
		return "server-auth"
	case ClientAuth:
		return "client-auth"
	default:
		return fmt.Sprintf("Usage(%d)", int(u))
	}
}

func (u Usage) extKeyUsage() (x509.ExtKeyUsage, bool) {
	switch u {
	case ServerAuth:
		return x509.ExtKeyUsageServerAuth, true
	case ClientAuth:
		return x509.ExtKeyUsageClientAuth, true
	default:
		return 0, false
	}
}

// Request describes a certificate to issue.
type Request struct {
	CommonName string // for client certificates, the etcd user
	DNSNames   []string
	IPs        []net.IP
	Usage      Usage         // ServerAuth or ClientAuth
	Validity   time.Duration // DefaultValidity when zero
	NotBefore  time.Time     // one minute ago when zero
}

// Issued is a certificate with its private key, both PEM encoded.
type Issued struct {
	CertPEM, KeyPEM []byte
	Cert            *x509.Certificate
}

// Issue creates a new ECDSA P-256 key and a certificate for it signed by c.
// A server certificate needs at least one DNS name or IP, since TLS clients
// check the server's name against them.
func (c *CA) Issue(r Request) (*Issued, error) {
	if r.CommonName == "" {
		return nil, fmt.Errorf("%w: empty common name: name the certificate (for a client, the etcd user)", ErrInvalidRequest)
	}
	eku, ok := r.Usage.extKeyUsage()
	if !ok {
		return nil, fmt.Errorf("%w: %q: usage %s: set ServerAuth or ClientAuth", ErrInvalidRequest, r.CommonName, r.Usage)
	}
	if r.Usage == ServerAuth && len(r.DNSNames) == 0 && len(r.IPs) == 0 {
		return nil, fmt.Errorf("%w: %q: a server certificate needs a DNS name or IP that clients connect to", ErrInvalidRequest, r.CommonName)
	}
	validity := r.Validity
	if validity == 0 {
		validity = DefaultValidity
	}
	if validity < 0 {
		return nil, fmt.Errorf("%w: %q: validity %s is negative", ErrInvalidRequest, r.CommonName, validity)
	}
	notBefore := r.NotBefore
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-backdate)
	}

	key, err := newKey()
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	skid, err := subjectKeyID(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: r.CommonName},
		DNSNames:              slices.Clone(r.DNSNames),
		IPAddresses:           slices.Clone(r.IPs),
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{eku},
		BasicConstraintsValid: true,
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.Cert, &key.PublicKey, c.Key)
	if err != nil {
		return nil, fmt.Errorf("signing the certificate %q: %w", r.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the new certificate %q: %w", r.CommonName, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &Issued{CertPEM: encodeCert(der), KeyPEM: keyPEM, Cert: cert}, nil
}

// IssueServer issues a ServerAuth certificate for the given names.
func (c *CA) IssueServer(commonName string, dnsNames []string, ips []net.IP) (*Issued, error) {
	return c.Issue(Request{CommonName: commonName, DNSNames: dnsNames, IPs: ips, Usage: ServerAuth})
}

// IssueClient issues a ClientAuth certificate whose common name is user, the
// etcd user it authenticates as (admin-<cluster>, remote-<cluster>).
func (c *CA) IssueClient(user string) (*Issued, error) {
	return c.Issue(Request{CommonName: user, Usage: ClientAuth})
}

// Save writes dir/name.crt (0644) and dir/name.key (0600), creating dir with
// mode 0700 if needed. Existing files are replaced, each one atomically, so a
// renewed certificate and key take the place of the old ones.
func (i *Issued) Save(dir, name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) {
		return fmt.Errorf("%w: certificate file name %q: give a plain file name without extension", ErrInvalidRequest, name)
	}
	if err := mkdir(dir); err != nil {
		return err
	}
	base := filepath.Join(dir, name)
	if err := writeAtomic(base+".key", i.KeyPEM, keyMode); err != nil {
		return err
	}
	return writeAtomic(base+".crt", i.CertPEM, certMode)
}
