package ca

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"
)

// LoadKeyPair reads a PEM certificate (optionally followed by its chain) and
// its private key, and checks that the key belongs to the certificate. It
// returns the pair for tls.Config.Certificates and the parsed leaf.
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, *x509.Certificate, error) {
	certPEM, err := readFile(certFile, "certificate")
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	keyPEM, err := readFile(keyFile, "key")
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certs, err := parseCerts(certPEM, certFile)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	key, err := parseKey(keyPEM, keyFile)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf := certs[0]
	if !keyMatches(leaf, key) {
		return tls.Certificate{}, nil, fmt.Errorf("checking %s: %w %s: pass the key file saved with that certificate", keyFile, ErrKeyMismatch, certFile)
	}
	pair := tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range certs {
		pair.Certificate = append(pair.Certificate, c.Raw)
	}
	return pair, leaf, nil
}

// LoadPool reads the PEM CA certificates in caFile into a pool.
func LoadPool(caFile string) (*x509.CertPool, error) {
	data, err := readFile(caFile, "CA certificate")
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts(data, caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// ServerTLSConfig builds the configuration of a mutual-TLS server (an etcd
// listener): it presents certFile, and requires clients to present a
// certificate signed by a CA in caFile. The server certificate is checked
// with Verify first, so a bad certificate fails here with a clear error
// instead of in every handshake.
func ServerTLSConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	pair, pool, err := loadChecked(certFile, keyFile, caFile, ServerAuth)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// ClientTLSConfig builds the configuration of a mutual-TLS client: it trusts
// servers signed by a CA in caFile and presents certFile, whose common name
// is the etcd user. The client certificate is checked with Verify first. The
// caller sets ServerName when the dialer does not.
func ClientTLSConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	pair, pool, err := loadChecked(certFile, keyFile, caFile, ClientAuth)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

func loadChecked(certFile, keyFile, caFile string, usage Usage) (tls.Certificate, *x509.CertPool, error) {
	pair, leaf, err := LoadKeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool, err := LoadPool(caFile)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	if err := Verify(leaf, pool, usage, time.Now()); err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("checking %s (CA %s): %w", certFile, caFile, err)
	}
	return pair, pool, nil
}
