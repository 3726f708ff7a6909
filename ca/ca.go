package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// Files in a CA directory.
const (
	CertFile = "ca.crt"
	KeyFile  = "ca.key"
)

// backdate is how far NotBefore is set in the past by default, to tolerate
// small clock differences between hosts.
const backdate = time.Minute

// CA is the mesh certificate authority: a self-signed ECDSA P-256 certificate
// and its private key.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// New creates a self-signed CA named commonName, valid from one minute ago
// for validity.
func New(commonName string, validity time.Duration) (*CA, error) {
	return newCA(commonName, time.Now().Add(-backdate), validity)
}

func newCA(commonName string, notBefore time.Time, validity time.Duration) (*CA, error) {
	if commonName == "" {
		return nil, fmt.Errorf("%w: empty common name: give the CA a name", ErrInvalidRequest)
	}
	if validity <= 0 {
		return nil, fmt.Errorf("%w: CA %q: validity %s is not positive", ErrInvalidRequest, commonName, validity)
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
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // signs leaf certificates only
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("signing the CA certificate %q: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the new CA certificate %q: %w", commonName, err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Save writes dir/ca.crt (0644) and dir/ca.key (0600), creating dir with mode
// 0700 if needed. It never overwrites: if either file exists it returns an
// error wrapping ErrExists and writes nothing.
func (c *CA) Save(dir string) error {
	keyPEM, err := encodeKey(c.Key)
	if err != nil {
		return err
	}
	if err := mkdir(dir); err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	for _, p := range []string{keyPath, certPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("writing %s: %w: %s", p, ErrExists, hintSaveElsewhere)
		}
	}
	// The key is created exclusively first, so two concurrent Saves cannot
	// both succeed.
	if err := writeExclusive(keyPath, keyPEM, keyMode); err != nil {
		return err
	}
	if err := writeExclusive(certPath, c.CertPEM(), certMode); err != nil {
		os.Remove(keyPath)
		return err
	}
	return nil
}

// Load reads dir/ca.crt and dir/ca.key and checks that the key matches the
// certificate, that the certificate is a CA, and that it is valid now.
func Load(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	certPEM, err := readFile(certPath, "CA certificate")
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFile(keyPath, "CA key")
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts(certPEM, certPath)
	if err != nil {
		return nil, err
	}
	cert := certs[0]
	signer, err := parseKey(keyPEM, keyPath)
	if err != nil {
		return nil, err
	}
	key, ok := signer.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("checking %s: %w: CA key is %T, want ECDSA P-256: point at a directory written by `clustermesh ca`", keyPath, ErrInvalidPEM, signer)
	}
	if !keyMatches(cert, key) {
		return nil, fmt.Errorf("checking %s: %w %s: put the CA's own key next to it", keyPath, ErrKeyMismatch, certPath)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("checking %s: %w: %q cannot sign certificates: point at the mesh CA directory", certPath, ErrNotCA, name(cert))
	}
	if err := checkDates(cert, time.Now(), "mesh CA ", hintNewCA); err != nil {
		return nil, fmt.Errorf("checking %s: %w", certPath, err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// CertPEM returns the CA certificate in PEM form.
func (c *CA) CertPEM() []byte { return encodeCert(c.Cert.Raw) }

// Pool returns a certificate pool holding only this CA.
func (c *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Cert)
	return p
}

func newKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating a key: %w", err)
	}
	return key, nil
}

// serialLimit is 2^128: serials are random 128-bit numbers.
var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

func newSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("generating a serial number: %w", err)
		}
		if n.Sign() > 0 { // serials must be positive
			return n, nil
		}
	}
}

// subjectKeyID is the SHA-1 of the public key (RFC 5280, 4.2.1.2, method 1).
func subjectKeyID(pub *ecdsa.PublicKey) ([]byte, error) {
	b, err := pub.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encoding the public key: %w", err)
	}
	sum := sha1.Sum(b)
	return sum[:], nil
}

// name identifies a certificate in messages: its common name, or its
// subject and serial when it has none.
func name(c *x509.Certificate) string {
	if c.Subject.CommonName != "" {
		return c.Subject.CommonName
	}
	return fmt.Sprintf("%s (serial %x)", c.Subject, c.SerialNumber)
}
