package agentsync

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/merge"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// The list+watch of one kind against a real etcd in this process, with the
// merge replaced by a recorder: what the stores hand on, page by page.

const lwWait = 30 * time.Second

var lwWest = wire.Cluster{Name: "west", ID: 2, MaxConnectedClusters: wire.DefaultMaxConnectedClusters}

// lwEtcd starts an etcd on loopback for the test and returns a client.
func lwEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.TickMs, cfg.ElectionMs = 10, 100
	cfg.UnsafeNoFsync = true
	local := []url.URL{{Scheme: "http", Host: "127.0.0.1:0"}}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = local, local
	cfg.ListenPeerUrls = []url.URL{{Scheme: "unix", Host: cfg.Dir + "/peer.sock"}}
	cfg.AdvertisePeerUrls = []url.URL{{Scheme: "unix", Host: "test-peer"}} // never dialled
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(lwWait):
		t.Fatal("etcd not ready")
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Clients[0].Addr().String()}, Logger: zap.NewNop(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// lwID is the etcd cluster id a session pins.
func lwID(t *testing.T, cli *clientv3.Client) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), lwWait)
	defer cancel()
	resp, err := cli.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.ClusterId
}

// lwSink records the ipcache claims handed to the merge; hook, when set,
// runs after each batch (a list page or a watch response).
type lwSink struct {
	mu      sync.Mutex
	ips     map[netip.Prefix]bool
	batches int
	hook    func(batch int)
}

func (s *lwSink) SetIPs(_ uint16, us []merge.IPUpdate) {
	s.mu.Lock()
	for _, u := range us {
		if u.Entry != nil {
			s.ips[u.Prefix] = true
		} else {
			delete(s.ips, u.Prefix)
		}
	}
	s.batches++
	n, hook := s.batches, s.hook
	s.mu.Unlock()
	if hook != nil {
		hook(n)
	}
}

func (s *lwSink) SetRemoteService(string, merge.ServiceName, *merge.RemoteService) {}
func (s *lwSink) SetNodeRanges(uint16, []netip.Prefix, []netip.Prefix)             {}
func (s *lwSink) OverlapsLocal(netip.Prefix) bool                                  { return false }

func (s *lwSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ips)
}

// lwLog collects the messages an agent logs.
type lwLog struct {
	mu   sync.Mutex
	msgs []string
}

func (l *lwLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *lwLog) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.msgs = append(l.msgs, r.Message)
	l.mu.Unlock()
	return nil
}
func (l *lwLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *lwLog) WithGroup(string) slog.Handler      { return l }

func (l *lwLog) saw(msg string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.msgs {
		if strings.Contains(m, msg) {
			return true
		}
	}
	return false
}

// lwRemote is remote west of an agent whose stores hand on to a recorder.
func lwRemote(t *testing.T, pageSize int64) (*remote, *lwSink, *lwLog) {
	t.Helper()
	log := &lwLog{}
	a, err := New(Config{ClusterName: "east", ClusterID: 1, ConfigDir: t.TempDir(), LocalSource: nopSource{},
		Datapath: datapath.NewMemory(), ListPageSize: pageSize, ProbeInterval: 40 * time.Millisecond, Logger: slog.New(log)})
	if err != nil {
		t.Fatal(err)
	}
	r := newRemote(a, "west", RemoteConfig{}, nil)
	sink := &lwSink{ips: map[netip.Prefix]bool{}}
	r.out = sink
	r.setConnected(lwWest, 0, layout{})
	return r, sink, log
}

type nopSource struct{}

func (nopSource) Run(ctx context.Context, _ func(*statesource.State)) error { <-ctx.Done(); return nil }

// lwPut publishes n ipcache entries of west, from 10.2.1.first on.
func lwPut(t *testing.T, cli *clientv3.Client, first, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), lwWait)
	defer cancel()
	for i := first; i < first+n; i++ {
		ip := fmt.Sprintf("10.2.%d.%d", i/250, 1+i%250)
		if _, err := cli.Put(ctx, wire.IPCacheKey(ip), fmt.Sprintf(`{"IP":%q,"ID":131100,"K8sNamespace":"shop","K8sPodName":"pod-%d"}`, ip, i)); err != nil {
			t.Fatal(err)
		}
	}
}

func lwDelete(t *testing.T, cli *clientv3.Client, i int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), lwWait)
	defer cancel()
	if _, err := cli.Delete(ctx, wire.IPCacheKey(fmt.Sprintf("10.2.%d.%d", i/250, 1+i%250))); err != nil {
		t.Fatal(err)
	}
}

func lwCanary(t *testing.T, cli *clientv3.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), lwWait)
	defer cancel()
	if _, err := cli.Put(ctx, wire.SyncedKey("west", wire.IPCache), "now"); err != nil {
		t.Fatal(err)
	}
}

// lwRun runs the ipcache kind of r until the test ends.
func lwRun(t *testing.T, r *remote, cli *clientv3.Client) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	id := lwID(t, cli)
	go func() { done <- r.kinds[wire.IPCache].run(ctx, cli, lwWest, true, id, layout{}) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func lwStats(r *remote) kindStats { return r.kinds[wire.IPCache].snapshotStats() }

// Nothing is listed before the synced canary: until then the store may
// hold only part of the remote's state.
func TestListWaitsForTheCanary(t *testing.T) {
	cli := lwEtcd(t)
	r, sink, log := lwRemote(t, 0)
	lwPut(t, cli, 0, 5)
	lwRun(t, r, cli)
	testenv.WaitFor(t, lwWait, "the kind waiting for its canary", func() bool { return log.saw("waiting for synced canary") })
	if n := sink.count(); n != 0 || lwStats(r).lists != 0 {
		t.Fatalf("%d entries handed on, %d lists before the canary", n, lwStats(r).lists)
	}
	lwCanary(t, cli)
	testenv.WaitFor(t, lwWait, "the 5 entries listed after the canary", func() bool { return sink.count() == 5 && lwStats(r).lists == 1 })
}

// A list reads page by page at one revision: a prefix of 25 entries in
// pages of 4 is 7 batches, and a watch follows from the list's revision.
func TestListPagesThenWatches(t *testing.T) {
	cli := lwEtcd(t)
	r, sink, _ := lwRemote(t, 4)
	lwPut(t, cli, 0, 25)
	lwCanary(t, cli)
	lwRun(t, r, cli)
	testenv.WaitFor(t, lwWait, "25 entries listed", func() bool { return sink.count() == 25 && lwStats(r).lists == 1 })
	sink.mu.Lock()
	pages := sink.batches
	sink.mu.Unlock()
	if pages != 7 {
		t.Errorf("%d batches for 25 entries in pages of 4, want 7 (one per page)", pages)
	}
	lwPut(t, cli, 25, 1)
	lwDelete(t, cli, 0)
	testenv.WaitFor(t, lwWait, "the watch's put and delete applied", func() bool {
		sink.mu.Lock()
		defer sink.mu.Unlock()
		return len(sink.ips) == 25 && sink.ips[netip.MustParsePrefix("10.2.0.26/32")] && !sink.ips[netip.MustParsePrefix("10.2.0.1/32")]
	})
	// The pods are named from their entries, for flows; a deleted entry's
	// name goes with it.
	podName := func(a string) (PodName, bool) {
		ks := r.kinds[wire.IPCache]
		ks.mu.Lock()
		defer ks.mu.Unlock()
		return ks.store.(*ipcacheStore).podName(netip.MustParseAddr(a))
	}
	if n, ok := podName("10.2.0.26"); !ok || n != (PodName{Namespace: "shop", Name: "pod-25"}) {
		t.Errorf("pod of 10.2.0.26 = %+v, %v; want west's shop/pod-25", n, ok)
	}
	if n, ok := podName("10.2.0.1"); ok {
		t.Errorf("pod of 10.2.0.1 = %+v after its entry was deleted", n)
	}
}

// Mark-and-sweep: an entry gone from the remote leaves only after a list
// that completed without it; a list that ends half-way removes nothing.
func TestSweepOnlyAfterACompleteList(t *testing.T) {
	cli := lwEtcd(t)
	r, sink, _ := lwRemote(t, 3)
	ks := r.kinds[wire.IPCache]
	lwPut(t, cli, 0, 10)
	ctx, cancel := context.WithTimeout(context.Background(), lwWait)
	defer cancel()
	if _, err := ks.list(ctx, cli, lwWest, lwID(t, cli)); err != nil {
		t.Fatal(err)
	}
	lwDelete(t, cli, 9) // the last key: only a complete list can miss it

	// A list cut after its second page.
	cut, cutCancel := context.WithCancel(ctx)
	sink.mu.Lock()
	sink.batches, sink.hook = 0, func(n int) {
		if n == 2 {
			cutCancel()
		}
	}
	sink.mu.Unlock()
	if _, err := ks.list(cut, cli, lwWest, lwID(t, cli)); err == nil {
		t.Fatal("the cut list reported success")
	}
	if n := sink.count(); n != 10 || ks.count() != 10 {
		t.Fatalf("after a cut list: %d handed on, %d held; want all 10 kept", n, ks.count())
	}
	sink.mu.Lock()
	sink.hook = nil
	sink.mu.Unlock()
	if _, err := ks.list(ctx, cli, lwWest, lwID(t, cli)); err != nil {
		t.Fatal(err)
	}
	if n := sink.count(); n != 9 || ks.count() != 9 {
		t.Errorf("after a complete list: %d handed on, %d held; want the 9 still published", n, ks.count())
	}
}

// A compaction of the list's revision while it pages starts the list over
// (a new generation) and ends with exactly what the remote holds.
func TestListRestartsAfterCompactionMidList(t *testing.T) {
	cli := lwEtcd(t)
	r, sink, _ := lwRemote(t, 3)
	ks := r.kinds[wire.IPCache]
	lwPut(t, cli, 0, 12)
	ctx, cancel := context.WithTimeout(context.Background(), lwWait)
	defer cancel()
	sink.hook = func(n int) {
		if n != 1 {
			return
		}
		lwDelete(t, cli, 11) // changes the store past the list's revision
		resp, err := cli.Get(ctx, "any")
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
			t.Error(err)
		}
	}
	rev, err := ks.list(ctx, cli, lwWest, lwID(t, cli))
	if err != nil {
		t.Fatal(err)
	}
	if n := ks.count(); n != 11 || sink.count() != 11 {
		t.Errorf("after the restarted list: %d held, %d handed on; want the 11 published", n, sink.count())
	}
	if st := lwStats(r); st.lists != 1 {
		t.Errorf("%d complete lists, want 1", st.lists)
	}
	resp, err := cli.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if rev != resp.Header.Revision {
		t.Errorf("list revision %d, want the revision after the compaction, %d", rev, resp.Header.Revision)
	}
}

// A watch that falls behind a compaction relists within the session.
func TestCompactedWatchRelists(t *testing.T) {
	cli := lwEtcd(t)
	r, sink, log := lwRemote(t, 0)
	lwPut(t, cli, 0, 3)
	lwCanary(t, cli)
	ctx, cancel := context.WithTimeout(context.Background(), lwWait)
	defer cancel()
	// After the list's last page, before the watch starts: a change and a
	// compaction past the list's revision.
	sink.hook = func(n int) {
		if n != 1 {
			return
		}
		lwPut(t, cli, 3, 2) // two revisions: the compaction passes the watch's start
		resp, err := cli.Get(ctx, "any")
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
			t.Error(err)
		}
	}
	lwRun(t, r, cli)
	testenv.WaitFor(t, lwWait, "the relist after the compacted watch", func() bool {
		return lwStats(r).lists == 2 && sink.count() == 5 && log.saw("watch fell behind a compaction")
	})
}
