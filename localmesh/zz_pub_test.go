package localmesh

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/meshapiserver"
	"github.com/clustermesh/clustermesh/statesource"
)

func TestZZPublish(t *testing.T) {
	e := newFaultEnv(t)
	st := bigState(2, 100000, 10, 0, 0)
	stateFile := filepath.Join(e.dir, "west.json")
	t0 := time.Now()
	writeJSON(t, stateFile, st)
	t.Logf("wrote json %s", time.Since(t0))
	t0 = time.Now()
	if _, err := statesource.LoadFile(stateFile); err != nil {
		t.Fatal(err)
	}
	t.Logf("parsed %s", time.Since(t0))
	srv, err := meshapiserver.New(meshapiserver.Config{ClusterName: "west", ClusterID: 2, ListenAddress: freeAddr(t),
		ServerCertFile: e.west.ServerCert(), ServerKeyFile: e.west.ServerKey(), CAFile: e.west.CAFile(),
		AdminCertFile: e.west.AdminCert(), AdminKeyFile: e.west.AdminKey(), Peers: []string{"east"},
		Source: &statesource.File{Path: stateFile},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t0 = time.Now()
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
		t.Logf("ready after %s: %+v", time.Since(t0), srv.Status().Publish)
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-ctx.Done():
		t.Fatalf("not ready: %+v", srv.Status().Publish)
	}
	cancel()
	<-done
}
