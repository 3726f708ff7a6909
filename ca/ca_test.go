package ca

import (
	"bytes"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestNewSaveLoadRoundTrip(t *testing.T) {
	before := time.Now()
	c, err := New("mesh-ca", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert := c.Cert
	if !cert.IsCA || !cert.BasicConstraintsValid {
		t.Errorf("IsCA=%v BasicConstraintsValid=%v, want both true", cert.IsCA, cert.BasicConstraintsValid)
	}
	if want := x509.KeyUsageCertSign | x509.KeyUsageCRLSign; cert.KeyUsage != want {
		t.Errorf("KeyUsage = %v, want %v", cert.KeyUsage, want)
	}
	if len(cert.SubjectKeyId) == 0 {
		t.Error("SubjectKeyId not set")
	}
	if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %x is not a positive 128-bit number", cert.SerialNumber)
	}
	if c.Key.Curve != elliptic.P256() {
		t.Errorf("curve %s, want P-256", c.Key.Curve.Params().Name)
	}
	if cert.Subject.CommonName != "mesh-ca" || cert.Issuer.CommonName != "mesh-ca" {
		t.Errorf("subject %q issuer %q, want self-signed mesh-ca", cert.Subject, cert.Issuer)
	}
	// NotBefore is one minute back (certificates carry second precision).
	if nb := cert.NotBefore; nb.After(before.Add(-time.Minute)) || nb.Before(before.Add(-time.Minute-2*time.Second)) {
		t.Errorf("NotBefore %s, want about %s", nb, before.Add(-time.Minute))
	}
	if got := cert.NotAfter.Sub(cert.NotBefore); got != 48*time.Hour {
		t.Errorf("validity %s, want 48h", got)
	}

	dir := filepath.Join(t.TempDir(), "mesh")
	if err := c.Save(dir); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]fs.FileMode{
		dir:                          fs.ModeDir | 0o700,
		filepath.Join(dir, CertFile): 0o644,
		filepath.Join(dir, KeyFile):  0o600,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
	}
	if data, _ := os.ReadFile(filepath.Join(dir, CertFile)); !bytes.Equal(data, c.CertPEM()) {
		t.Error("ca.crt differs from CertPEM()")
	}

	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Cert.Equal(c.Cert) {
		t.Error("loaded certificate differs")
	}
	if !got.Key.Equal(c.Key) {
		t.Error("loaded key differs")
	}
}

func TestNewRejectsBadArguments(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cn       string
		validity time.Duration
	}{
		{"empty name", "", time.Hour},
		{"zero validity", "mesh-ca", 0},
		{"negative validity", "mesh-ca", -time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cn, tc.validity)
			checkErr(t, err, ErrInvalidRequest)
		})
	}
}

func TestSaveRefusesToOverwrite(t *testing.T) {
	t.Run("existing CA", func(t *testing.T) {
		dir := t.TempDir()
		first := newTestCA(t, "first")
		saveCA(t, first, dir)
		err := newTestCA(t, "second").Save(dir)
		checkErr(t, err, ErrExists, filepath.Join(dir, KeyFile), "use a new --out directory or remove it")
		got, err := Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Cert.Equal(first.Cert) || !got.Key.Equal(first.Key) {
			t.Error("the first CA was overwritten")
		}
	})
	t.Run("only ca.crt exists", func(t *testing.T) {
		dir := t.TempDir()
		crt := filepath.Join(dir, CertFile)
		if err := os.WriteFile(crt, []byte("keep"), 0o644); err != nil {
			t.Fatal(err)
		}
		err := newTestCA(t, "mesh-ca").Save(dir)
		checkErr(t, err, ErrExists, crt, "--out")
		if _, err := os.Stat(filepath.Join(dir, KeyFile)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("ca.key written although Save failed: %v", err)
		}
	})
}

// writeCA writes certPEM and keyPEM as a CA directory's files, and returns
// the directory.
func writeCA(t *testing.T, certPEM, keyPEM []byte) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, CertFile), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, KeyFile), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// caPair is c's certificate and key, PEM-encoded.
func caPair(t *testing.T, c *CA) (certPEM, keyPEM []byte) {
	t.Helper()
	k, err := encodeKey(c.Key)
	if err != nil {
		t.Fatal(err)
	}
	return c.CertPEM(), k
}

// caValidFrom is a CA valid from notBefore for validity.
func caValidFrom(t *testing.T, notBefore time.Time, validity time.Duration) *CA {
	t.Helper()
	c, err := newCA("mesh-ca", notBefore, validity)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLoadChecks(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T) string // returns the CA directory
		want  error
		hints []string
	}{
		{
			name: "key of another CA",
			setup: func(t *testing.T) string {
				crt, _ := caPair(t, newTestCA(t, "mesh-ca"))
				_, key := caPair(t, newTestCA(t, "mesh-ca"))
				return writeCA(t, crt, key)
			},
			want:  ErrKeyMismatch,
			hints: []string{KeyFile, CertFile},
		},
		{
			name: "leaf certificate is not a CA",
			setup: func(t *testing.T) string {
				is := issue(t, newTestCA(t, "mesh-ca"), Request{CommonName: "admin-c1", Usage: ClientAuth})
				return writeCA(t, is.CertPEM, is.KeyPEM)
			},
			want:  ErrNotCA,
			hints: []string{"admin-c1", "mesh CA directory"},
		},
		{
			name: "expired CA",
			setup: func(t *testing.T) string {
				crt, key := caPair(t, caValidFrom(t, now.Add(-48*time.Hour), time.Hour))
				return writeCA(t, crt, key)
			},
			want:  ErrExpired,
			hints: []string{"expired at", "create a new mesh CA"},
		},
		{
			name: "CA not yet valid",
			setup: func(t *testing.T) string {
				crt, key := caPair(t, caValidFrom(t, now.Add(time.Hour), time.Hour))
				return writeCA(t, crt, key)
			},
			want:  ErrNotYetValid,
			hints: []string{"valid from", "clock"},
		},
		{
			name: "not PEM",
			setup: func(t *testing.T) string {
				_, key := caPair(t, newTestCA(t, "mesh-ca"))
				return writeCA(t, []byte("not a certificate"), key)
			},
			want:  ErrInvalidPEM,
			hints: []string{CertFile},
		},
		{
			name: "key is not PEM",
			setup: func(t *testing.T) string {
				crt, _ := caPair(t, newTestCA(t, "mesh-ca"))
				return writeCA(t, crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}))
			},
			want:  ErrInvalidPEM,
			hints: []string{KeyFile},
		},
		{
			name:  "missing directory",
			setup: func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope") },
			want:  fs.ErrNotExist,
			hints: []string{filepath.Join("nope", CertFile)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.setup(t))
			checkErr(t, err, tc.want, tc.hints...)
		})
	}
}

func TestCertPEMAndPool(t *testing.T) {
	c := newTestCA(t, "mesh-ca")
	block, rest := pem.Decode(c.CertPEM())
	if block == nil || block.Type != "CERTIFICATE" || len(rest) != 0 {
		t.Fatalf("CertPEM is not one CERTIFICATE block")
	}
	if !bytes.Equal(block.Bytes, c.Cert.Raw) {
		t.Error("CertPEM does not hold the CA certificate")
	}
	is := issue(t, c, Request{CommonName: "remote-c2", Usage: ClientAuth})
	if _, err := is.Cert.Verify(x509.VerifyOptions{Roots: c.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("issued certificate does not verify against Pool(): %v", err)
	}
}
