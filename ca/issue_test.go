package ca

import (
	"bytes"
	"crypto/x509"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestIssueServer(t *testing.T) {
	c := newTestCA(t, "mesh-ca")
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("fd00::1")}
	is, err := c.IssueServer("clustermesh-apiserver", []string{"localhost", "c1.mesh.local"}, ips)
	if err != nil {
		t.Fatal(err)
	}
	cert := is.Cert
	if cert.Subject.CommonName != "clustermesh-apiserver" {
		t.Errorf("CN %q", cert.Subject.CommonName)
	}
	if !slices.Equal(cert.DNSNames, []string{"localhost", "c1.mesh.local"}) {
		t.Errorf("DNSNames %v", cert.DNSNames)
	}
	if len(cert.IPAddresses) != 2 || !cert.IPAddresses[0].Equal(ips[0]) || !cert.IPAddresses[1].Equal(ips[1]) {
		t.Errorf("IPAddresses %v, want %v", cert.IPAddresses, ips)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("ExtKeyUsage %v, want server-auth only", cert.ExtKeyUsage)
	}
	if cert.IsCA {
		t.Error("leaf certificate is a CA")
	}
	if !bytes.Equal(cert.AuthorityKeyId, c.Cert.SubjectKeyId) {
		t.Error("AuthorityKeyId does not match the CA's SubjectKeyId")
	}
	if got := cert.NotAfter.Sub(cert.NotBefore); got != DefaultValidity {
		t.Errorf("validity %s, want %s", got, DefaultValidity)
	}
	if err := cert.VerifyHostname("c1.mesh.local"); err != nil {
		t.Error(err)
	}
	if err := cert.VerifyHostname("fd00::1"); err != nil {
		t.Error(err)
	}
	checkErr(t, Verify(cert, c.Pool(), ServerAuth, time.Now()), nil)

	// Saved files load back as a matching key pair, with the usual modes.
	dir := filepath.Join(t.TempDir(), "certs")
	certFile, keyFile := save(t, is, dir, "server")
	for path, want := range map[string]fs.FileMode{dir: fs.ModeDir | 0o700, certFile: 0o644, keyFile: 0o600} {
		if fi, err := os.Stat(path); err != nil {
			t.Fatal(err)
		} else if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
	}
	_, leaf, err := LoadKeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !leaf.Equal(cert) {
		t.Error("loaded certificate differs")
	}

	// Saving again replaces the pair (renewal).
	renewed := issue(t, c, Request{CommonName: "clustermesh-apiserver", DNSNames: []string{"localhost"}, Usage: ServerAuth})
	save(t, renewed, dir, "server")
	if _, leaf, err = LoadKeyPair(certFile, keyFile); err != nil {
		t.Fatal(err)
	} else if !leaf.Equal(renewed.Cert) {
		t.Error("Save did not replace the certificate")
	}
}

func TestIssueClient(t *testing.T) {
	c := newTestCA(t, "mesh-ca")
	is, err := c.IssueClient("remote-c2")
	if err != nil {
		t.Fatal(err)
	}
	cert := is.Cert
	if cert.Subject.CommonName != "remote-c2" {
		t.Errorf("CN %q, want the etcd user remote-c2", cert.Subject.CommonName)
	}
	if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses)+len(cert.URIs) != 0 {
		t.Errorf("client certificate has SANs: %v %v", cert.DNSNames, cert.IPAddresses)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ExtKeyUsage %v, want client-auth only", cert.ExtKeyUsage)
	}
	checkErr(t, Verify(cert, c.Pool(), ClientAuth, time.Now()), nil)
}

func TestIssueRequestFields(t *testing.T) {
	c := newTestCA(t, "mesh-ca")
	nb := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	is := issue(t, c, Request{CommonName: "admin-c1", Usage: ClientAuth, NotBefore: nb, Validity: 10 * time.Hour})
	if !is.Cert.NotBefore.Equal(nb) || !is.Cert.NotAfter.Equal(nb.Add(10*time.Hour)) {
		t.Errorf("validity %s..%s, want %s..+10h", is.Cert.NotBefore, is.Cert.NotAfter, nb)
	}
	other := issue(t, c, Request{CommonName: "admin-c1", Usage: ClientAuth})
	if is.Cert.SerialNumber.Cmp(other.Cert.SerialNumber) == 0 {
		t.Error("two certificates share a serial number")
	}
}

func TestIssueRejectsBadRequests(t *testing.T) {
	c := newTestCA(t, "mesh-ca")
	for _, tc := range []struct {
		name string
		req  Request
		hint string
	}{
		{"no common name", Request{Usage: ClientAuth}, "common name"},
		{"no usage", Request{CommonName: "admin-c1"}, "ServerAuth or ClientAuth"},
		{"unknown usage", Request{CommonName: "admin-c1", Usage: 7}, "ServerAuth or ClientAuth"},
		{"server without names", Request{CommonName: "apiserver", Usage: ServerAuth}, "DNS name or IP"},
		{"negative validity", Request{CommonName: "admin-c1", Usage: ClientAuth, Validity: -time.Hour}, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Issue(tc.req)
			checkErr(t, err, ErrInvalidRequest, tc.hint)
		})
	}
}

func TestIssuedSaveRejectsBadName(t *testing.T) {
	is := issue(t, newTestCA(t, "mesh-ca"), Request{CommonName: "admin-c1", Usage: ClientAuth})
	for _, name := range []string{"", ".", "..", "../escape", "a/b"} {
		checkErr(t, is.Save(t.TempDir(), name), ErrInvalidRequest)
	}
}

func TestVerify(t *testing.T) {
	now := time.Now()
	mesh := newTestCA(t, "mesh-ca")
	other := newTestCA(t, "other-ca")
	sameName := newTestCA(t, "mesh-ca") // a new CA that reuses the name
	expiredCA, err := newCA("old-ca", now.Add(-3*time.Hour), time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	server := issue(t, mesh, Request{CommonName: "apiserver", DNSNames: []string{"localhost"}, Usage: ServerAuth}).Cert
	client := issue(t, mesh, Request{CommonName: "admin-c1", Usage: ClientAuth}).Cert
	expired := issue(t, mesh, Request{CommonName: "admin-c1", Usage: ClientAuth,
		NotBefore: now.Add(-48 * time.Hour), Validity: time.Hour}).Cert
	notYet := issue(t, mesh, Request{CommonName: "admin-c1", Usage: ClientAuth,
		NotBefore: now.Add(time.Hour)}).Cert
	fromOther := issue(t, other, Request{CommonName: "remote-c2", Usage: ClientAuth}).Cert
	fromSameName := issue(t, sameName, Request{CommonName: "remote-c2", Usage: ClientAuth}).Cert
	// Valid itself, but signed by a CA that has since expired.
	underExpiredCA := issue(t, expiredCA, Request{CommonName: "admin-c1", Usage: ClientAuth,
		NotBefore: now.Add(-2 * time.Hour), Validity: 4 * time.Hour}).Cert

	for _, tc := range []struct {
		name  string
		cert  *x509.Certificate
		pool  *x509.CertPool
		usage Usage
		at    time.Time
		want  error
		hints []string
	}{
		{"server cert as server", server, mesh.Pool(), ServerAuth, now, nil, nil},
		{"client cert as client", client, mesh.Pool(), ClientAuth, now, nil, nil},
		{"pool with several CAs", fromOther, poolOf(mesh, other), ClientAuth, now, nil, nil},
		{"expired", expired, mesh.Pool(), ClientAuth, now, ErrExpired,
			[]string{`"admin-c1" expired at`, "issue a new one with `clustermesh ca issue`"}},
		{"expired at a later time", client, mesh.Pool(), ClientAuth, now.Add(400 * 24 * time.Hour), ErrExpired,
			[]string{"expired at", "clustermesh ca issue"}},
		{"expired and from another CA", expired, other.Pool(), ClientAuth, now, ErrExpired, nil},
		{"not yet valid", notYet, mesh.Pool(), ClientAuth, now, ErrNotYetValid,
			[]string{`"admin-c1" is valid from`, "clock"}},
		{"from another CA", fromOther, mesh.Pool(), ClientAuth, now, ErrUnknownAuthority,
			[]string{`issued by "other-ca"`, "issue it from the mesh CA in use, or connect with the peer's CA"}},
		{"from a new CA with the same name", fromSameName, mesh.Pool(), ClientAuth, now, ErrUnknownAuthority,
			[]string{`issued by "mesh-ca"`, "same name", "peer's CA"}},
		{"client cert as server", client, mesh.Pool(), ServerAuth, now, ErrWrongUsage,
			[]string{"no server-auth usage", "clustermesh ca issue --server"}},
		{"server cert as client", server, mesh.Pool(), ClientAuth, now, ErrWrongUsage,
			[]string{"no client-auth usage", "issue it with `clustermesh ca issue --client`"}},
		{"CA expired", underExpiredCA, expiredCA.Pool(), ClientAuth, now, ErrExpired,
			[]string{`mesh CA "old-ca" expired at`, "create a new mesh CA"}},
		{"no usage", client, mesh.Pool(), 0, now, ErrInvalidRequest, nil},
		{"nil pool", client, nil, ClientAuth, now, ErrInvalidRequest, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkErr(t, Verify(tc.cert, tc.pool, tc.usage, tc.at), tc.want, tc.hints...)
		})
	}
}

func poolOf(cas ...*CA) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range cas {
		p.AddCert(c.Cert)
	}
	return p
}
