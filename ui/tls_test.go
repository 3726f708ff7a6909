package ui

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/clustermesh/clustermesh/ca"
)

// TestMutualTLS: served with the mesh's mutual TLS, the UI answers a
// client with a certificate of the mesh CA, refuses one without, and may
// listen beyond loopback.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	c, err := ca.New("clustermesh test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.IssueBundle(filepath.Join(dir, "east"), "east", []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := c.IssueClient("ops")
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Save(dir, "ops"); err != nil {
		t.Fatal(err)
	}
	stc, err := ca.ServerTLSConfig(b.ServerCert(), b.ServerKey(), b.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	ctc, err := ca.ClientTLSConfig(filepath.Join(dir, "ops.crt"), filepath.Join(dir, "ops.key"), b.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	if err := New(Config{TLS: stc}).checkGuard(&net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 12000}); err != nil {
		t.Errorf("mutual TLS beyond loopback: %v", err)
	}

	o := startObserver(t)
	conn, err := grpc.NewClient("unix://"+o.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(Config{Client: observerpb.NewObserverClient(conn), TLS: stc}).Run(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	u := "https://" + ln.Addr().String() + "/api/map"
	with := &http.Client{Transport: &http.Transport{TLSClientConfig: ctc}}
	defer with.CloseIdleConnections()
	resp, err := with.Get(u)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("with the mesh's client certificate: %v %v", resp, err)
	}
	resp.Body.Close()
	noCert := ctc.Clone()
	noCert.Certificates = nil
	without := &http.Client{Transport: &http.Transport{TLSClientConfig: noCert}}
	defer without.CloseIdleConnections()
	if resp, err := without.Get(u); err == nil {
		resp.Body.Close()
		t.Errorf("without a client certificate: %s, want a refused handshake", resp.Status)
	}
}
