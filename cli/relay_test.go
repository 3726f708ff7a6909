package cli

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/peerservice"
	"github.com/clustermesh/clustermesh/relay/relaytest"
)

// The certificates from `clustermesh ca issue --observer-server` and
// `--observer-client`, used by an Observer server and by `clustermesh
// relay`, which finds it through a peer service and serves its flows.
func TestRelayCommand(t *testing.T) {
	dir, err := os.MkdirTemp("", "relaycli")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	caDir, certs := filepath.Join(dir, "ca"), filepath.Join(dir, "certs")
	ctx := t.Context()
	for _, args := range [][]string{
		{"ca", "create", "--out", caDir},
		{"ca", "issue", "--ca", caDir, "--out", certs, "--observer-server", "east"},
		{"ca", "issue", "--ca", caDir, "--out", certs, "--observer-client", "hubble-relay"},
	} {
		if out, err := run(ctx, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	caFile := filepath.Join(caDir, ca.CertFile)

	// An Observer server of east/n1 with the issued certificate.
	serverTLS, err := ca.ServerTLSConfig(filepath.Join(certs, "observer.crt"), filepath.Join(certs, "observer.key"), caFile)
	if err != nil {
		t.Fatal(err)
	}
	obs := relaytest.NewObserver("east/n1")
	obs.Add(relaytest.Flow("east/n1", time.Unix(1e9, 0), "shop", "a"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveGRPC(t, ln, grpc.Creds(credentials.NewTLS(serverTLS)), obs.Register)
	ps := peerservice.NewServer(nil, 0)
	ps.Update([]peerservice.Peer{{Name: "east/n1", Address: ln.Addr().String(), TLSServerName: ca.ObserverServerName("east", "n1")}})
	psLn, err := net.Listen("unix", filepath.Join(dir, "peer.sock"))
	if err != nil {
		t.Fatal(err)
	}
	serveGRPC(t, psLn, grpc.Creds(insecure.NewCredentials()), ps.Register)

	addr := freePort(t)
	relayCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := run(relayCtx, "relay", "--peer-service", "unix://"+filepath.Join(dir, "peer.sock"),
			"--listen-address", addr, "--metrics-addr", "", "--tls-ca-file", caFile,
			"--tls-client-cert-file", filepath.Join(certs, "hubble-relay.crt"), "--tls-client-key-file", filepath.Join(certs, "hubble-relay.key"))
		done <- err
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay: %v", err)
		}
	}()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cl := observerpb.NewObserverClient(conn)
	testenv.WaitFor(t, 20*time.Second, "the relay to connect east/n1", func() bool {
		ss, err := cl.ServerStatus(ctx, &observerpb.ServerStatusRequest{})
		return err == nil && ss.NumConnectedNodes.GetValue() == 1 && ss.NumFlows == 1
	})
	st, err := cl.GetFlows(ctx, &observerpb.GetFlowsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var flows int
	for {
		resp, err := st.Recv()
		if err != nil {
			break
		}
		if resp.GetFlow() != nil && resp.NodeName == "east/n1" {
			flows++
		}
	}
	if flows != 1 {
		t.Errorf("%d flows of east/n1 through the relay, want 1", flows)
	}
}

func serveGRPC(t *testing.T, ln net.Listener, opt grpc.ServerOption, register func(*grpc.Server)) {
	g := grpc.NewServer(opt)
	register(g)
	done := make(chan struct{})
	go func() { defer close(done); g.Serve(ln) }()
	t.Cleanup(func() { g.Stop(); <-done })
}

func TestRelayCommandNeedsPeers(t *testing.T) {
	_, err := run(t.Context(), "relay", "--listen-address", "127.0.0.1:0")
	if err == nil || !strings.Contains(err.Error(), "--peer-service") || !strings.Contains(err.Error(), "--tls-client-cert-file") {
		t.Errorf("relay without peer service nor certificate: %v", err)
	}
	if out, err := run(t.Context(), "relay", "--help"); err != nil || !strings.Contains(out, "hubble-grpc.clustermesh.io") {
		t.Errorf("relay --help: %v", err)
	}
}
