package ca

import (
	"context"
	"crypto/tls"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// meshFiles is a mesh CA with server and client certificates on disk.
type meshFiles struct {
	ca                   *CA
	caFile               string
	serverCrt, serverKey string
	clientCrt, clientKey string
}

func newMeshFiles(t *testing.T, caName string) meshFiles {
	t.Helper()
	dir := t.TempDir()
	c := newTestCA(t, caName)
	m := meshFiles{ca: c, caFile: saveCA(t, c, filepath.Join(dir, "ca"))}
	srv, err := c.IssueServer("apiserver", []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	m.serverCrt, m.serverKey = save(t, srv, dir, "server")
	cli, err := c.IssueClient("admin-c1")
	if err != nil {
		t.Fatal(err)
	}
	m.clientCrt, m.clientKey = save(t, cli, dir, "admin-c1")
	return m
}

func TestTLSConfigBuilders(t *testing.T) {
	mesh := newMeshFiles(t, "mesh-ca")
	other := newMeshFiles(t, "other-ca")
	dir := t.TempDir()
	expiredCrt, expiredKey := save(t, issue(t, mesh.ca, Request{CommonName: "apiserver", DNSNames: []string{"localhost"},
		Usage: ServerAuth, NotBefore: time.Now().Add(-48 * time.Hour), Validity: time.Hour}), dir, "expired")
	notPEM := filepath.Join(dir, "garbage.crt")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.crt")

	type builder func(certFile, keyFile, caFile string) (*tls.Config, error)
	for _, tc := range []struct {
		name                  string
		build                 builder
		certFile, keyFile, ca string
		want                  error
		hints                 []string
	}{
		{"server", ServerTLSConfig, mesh.serverCrt, mesh.serverKey, mesh.caFile, nil, nil},
		{"client", ClientTLSConfig, mesh.clientCrt, mesh.clientKey, mesh.caFile, nil, nil},
		{"expired server cert", ServerTLSConfig, expiredCrt, expiredKey, mesh.caFile, ErrExpired,
			[]string{expiredCrt, "clustermesh ca issue"}},
		{"client cert for a server", ServerTLSConfig, mesh.clientCrt, mesh.clientKey, mesh.caFile, ErrWrongUsage,
			[]string{mesh.clientCrt, "no server-auth usage"}},
		{"server cert for a client", ClientTLSConfig, mesh.serverCrt, mesh.serverKey, mesh.caFile, ErrWrongUsage,
			[]string{mesh.serverCrt, "clustermesh ca issue --client"}},
		{"client cert from another CA", ClientTLSConfig, other.clientCrt, other.clientKey, mesh.caFile, ErrUnknownAuthority,
			[]string{other.clientCrt, mesh.caFile, "peer's CA"}},
		{"server cert from another CA", ServerTLSConfig, other.serverCrt, other.serverKey, mesh.caFile, ErrUnknownAuthority,
			[]string{"other-ca"}},
		{"key of another certificate", ClientTLSConfig, mesh.clientCrt, other.clientKey, mesh.caFile, ErrKeyMismatch,
			[]string{other.clientKey, mesh.clientCrt}},
		{"missing CA file", ServerTLSConfig, mesh.serverCrt, mesh.serverKey, missing, fs.ErrNotExist,
			[]string{missing}},
		{"CA file not PEM", ClientTLSConfig, mesh.clientCrt, mesh.clientKey, notPEM, ErrInvalidPEM,
			[]string{notPEM}},
		{"certificate not PEM", ClientTLSConfig, notPEM, mesh.clientKey, mesh.caFile, ErrInvalidPEM,
			[]string{notPEM}},
		{"missing key", ServerTLSConfig, mesh.serverCrt, missing, mesh.caFile, fs.ErrNotExist,
			[]string{missing}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.build(tc.certFile, tc.keyFile, tc.ca)
			checkErr(t, err, tc.want, tc.hints...)
			if err != nil {
				return
			}
			if cfg.MinVersion != tls.VersionTLS12 || len(cfg.Certificates) != 1 || cfg.Certificates[0].Leaf == nil {
				t.Errorf("config %+v: want TLS 1.2+ and one certificate with its leaf", cfg)
			}
		})
	}

	srv, err := ServerTLSConfig(mesh.serverCrt, mesh.serverKey, mesh.caFile)
	if err != nil {
		t.Fatal(err)
	}
	if srv.ClientAuth != tls.RequireAndVerifyClientCert || srv.ClientCAs == nil {
		t.Errorf("server config does not require verified client certificates")
	}
	cli, err := ClientTLSConfig(mesh.clientCrt, mesh.clientKey, mesh.caFile)
	if err != nil {
		t.Fatal(err)
	}
	if cli.RootCAs == nil {
		t.Errorf("client config has no RootCAs")
	}
}

func TestHandshake(t *testing.T) {
	mesh := newMeshFiles(t, "mesh-ca")
	other := newMeshFiles(t, "other-ca")
	sameName := newMeshFiles(t, "mesh-ca") // a new CA that reuses the name

	serverCfg, err := ServerTLSConfig(mesh.serverCrt, mesh.serverKey, mesh.caFile)
	if err != nil {
		t.Fatal(err)
	}
	otherServerCfg, err := ServerTLSConfig(other.serverCrt, other.serverKey, other.caFile)
	if err != nil {
		t.Fatal(err)
	}
	clientCfg, err := ClientTLSConfig(mesh.clientCrt, mesh.clientKey, mesh.caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := LoadPool(mesh.caFile)
	if err != nil {
		t.Fatal(err)
	}
	// Clients that ClientTLSConfig refuses to build, assembled by hand.
	withCert := func(certFile, keyFile string) *tls.Config {
		pair, _, err := LoadKeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool}
	}
	sendAnyway := func(certFile, keyFile string) *tls.Config {
		cfg := withCert(certFile, keyFile)
		pair := cfg.Certificates[0]
		cfg.Certificates = nil
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
		return cfg
	}
	noCert := &tls.Config{RootCAs: pool}

	for _, tc := range []struct {
		name      string
		server    *tls.Config
		client    *tls.Config
		wantUser  string // etcd user the server sees; "" when the handshake must fail
		serverErr string // part of the server's error when it must reject the client
		clientErr string // part of the client's error when it must reject the server
	}{
		{name: "client from the mesh CA", server: serverCfg, client: clientCfg, wantUser: "admin-c1"},
		{name: "client without certificate", server: serverCfg, client: noCert,
			serverErr: "didn't provide a certificate"},
		// The client does not offer a certificate whose issuer the server
		// did not ask for, so the server sees none.
		{name: "client cert from another CA", server: serverCfg, client: withCert(other.clientCrt, other.clientKey),
			serverErr: "didn't provide a certificate"},
		{name: "client cert from another CA, sent anyway", server: serverCfg, client: sendAnyway(other.clientCrt, other.clientKey),
			serverErr: "unknown authority"},
		{name: "client cert from a new CA of the same name", server: serverCfg, client: withCert(sameName.clientCrt, sameName.clientKey),
			serverErr: "unknown authority"},
		{name: "server cert used as client cert", server: serverCfg, client: withCert(mesh.serverCrt, mesh.serverKey),
			serverErr: "key usage"},
		{name: "server from another CA", server: otherServerCfg, client: clientCfg,
			clientErr: "unknown authority"},
	} {
		for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			t.Run(tc.name+"/"+tls.VersionName(version), func(t *testing.T) {
				client := tc.client.Clone()
				client.ServerName = "localhost"
				client.MaxVersion = version
				user, serverErr, clientErr := handshake(t, tc.server, client)
				if tc.wantUser != "" {
					if serverErr != nil || clientErr != nil {
						t.Fatalf("handshake failed: server: %v; client: %v", serverErr, clientErr)
					}
					if user != tc.wantUser {
						t.Errorf("server sees user %q, want %q", user, tc.wantUser)
					}
					return
				}
				if clientErr == nil {
					t.Errorf("client: handshake succeeded, want failure")
				}
				if serverErr == nil {
					t.Errorf("server: handshake succeeded, want failure")
				}
				if tc.serverErr != "" && (serverErr == nil || !strings.Contains(serverErr.Error(), tc.serverErr)) {
					t.Errorf("server error %v, want one mentioning %q", serverErr, tc.serverErr)
				}
				if tc.clientErr != "" && (clientErr == nil || !strings.Contains(clientErr.Error(), tc.clientErr)) {
					t.Errorf("client error %v, want one mentioning %q", clientErr, tc.clientErr)
				}
			})
		}
	}
}

// handshake runs one mutual-TLS exchange over loopback: the client sends
// "ping", the server answers "pong". Exchanging data after the handshake
// makes a client see a rejection that TLS 1.3 reports only after its own
// handshake has completed. It returns the common name of the client
// certificate the server accepted and each side's error.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (user string, serverErr, clientErr error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	deadline, _ := ctx.Deadline()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	type result struct {
		user string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.Close()
		conn.SetDeadline(deadline)
		tc := tls.Server(conn, serverCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			done <- result{err: err}
			return
		}
		var user string
		if peers := tc.ConnectionState().PeerCertificates; len(peers) > 0 {
			user = peers[0].Subject.CommonName
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(tc, buf); err != nil {
			done <- result{err: err}
			return
		}
		_, err = tc.Write([]byte("pong"))
		done <- result{user: user, err: err}
	}()

	clientErr = func() error {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(deadline)
		tc := tls.Client(conn, clientCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		if _, err := tc.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(tc, buf); err != nil {
			return err
		}
		if string(buf) != "pong" {
			return &net.OpError{Op: "read", Err: io.ErrUnexpectedEOF}
		}
		return nil
	}()
	ln.Close() // unblocks Accept if the client never connected

	select {
	case r := <-done:
		return r.user, r.err, clientErr
	case <-ctx.Done():
		t.Fatalf("server did not finish: %v", ctx.Err())
		return "", nil, nil
	}
}
