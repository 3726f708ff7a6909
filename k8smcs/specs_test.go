package k8smcs

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/localmesh"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// The reader of remote export specs against real mesh apiservers (embedded
// etcd, mutual TLS, the agents' remote configs): west's exported service
// is read from east's config directory, follows west's state (unexported:
// gone; exported again: back, with its new port), and goes with west's
// config; east's own config (the local cluster) is never read.
func TestSpecReaderFollowsRemote(t *testing.T) {
	ctx := context.Background()
	created := time.Date(2026, 12, 5, 14, 0, 0, 0, time.UTC)
	exported := func(id int, port uint16) *statesource.State {
		st := localmesh.SampleState(id)
		st.Services[0].Ports[0].Port = port
		st.Services[0].Export = &statesource.Export{Created: created}
		return st
	}
	m, err := localmesh.Start(ctx, localmesh.Options{Dir: t.TempDir(), AgentClusters: []string{"none"}, ReadOwnCluster: true,
		Clusters: []localmesh.ClusterSpec{{Name: "east", ID: 1, State: exported(1, 80)}, {Name: "west", ID: 2, State: exported(2, 80)}}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	east, west := m.Cluster("east"), m.Cluster("west")

	changed := make(chan struct{}, 1)
	sr := newSpecReader(east.ConfigDir, "east", slog.Default(), newMetrics(), func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	sr.rescan = 50 * time.Millisecond
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); sr.run(rctx) }()
	defer func() { cancel(); <-done }()

	port := func() int32 { // west's exported port, 0 without
		ss := sr.specs()
		if len(ss) != 1 || len(ss["west"]) != 1 {
			return 0
		}
		return ss["west"][0].Ports[0].Port
	}
	testenv.WaitFor(t, 10*time.Second, "west's export read from east's configs", func() bool {
		st := sr.statuses()
		return port() == 80 && len(st) == 1 && st[0].Synced && st[0].Enabled && sr.allListed()
	})
	if s := sr.specs()["west"][0]; s.Type != wire.ImportClusterSetIP || !s.ExportCreationTimestamp.Equal(created) {
		t.Fatalf("west's spec %+v", s)
	}

	st := localmesh.SampleState(2)
	if err := west.WriteState(st); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "west's export gone with its ServiceExport", func() bool { return port() == 0 && len(sr.specs()) == 1 })
	if err := west.WriteState(exported(2, 8080)); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "west's export back on port 8080", func() bool { return port() == 8080 })

	// West's apiserver restarts with a new, empty etcd: the reader lists
	// it again and follows it.
	if err := west.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	if err := west.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := west.WriteState(exported(2, 9090)); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "west's export on port 9090 after its restart", func() bool { return port() == 9090 })

	if err := m.Disconnect("east", "west"); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "west forgotten with its config", func() bool { return len(sr.specs()) == 0 && len(sr.statuses()) == 0 })
}
