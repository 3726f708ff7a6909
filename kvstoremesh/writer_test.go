package kvstoremesh

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/agentsync"
	"github.com/clustermesh/clustermesh/wire"
)

func testWriter(ops, bytes int) *writer {
	return newWriter(ops, bytes, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func nodeKey(n string) string { return wire.NodeKey("west", n) }

// Writes of one key coalesce while queued, but never across a canary: a
// canary is written after everything queued before it.
func TestWriterCoalescesWithinSegments(t *testing.T) {
	w := testWriter(100, 1<<20)
	w.Upsert("west", wire.Nodes, nodeKey("a"), []byte("1"))
	w.Upsert("west", wire.Nodes, nodeKey("b"), []byte("1"))
	w.Upsert("west", wire.Nodes, nodeKey("a"), []byte("2"))
	w.Listed("west", wire.Nodes)
	w.Upsert("west", wire.Nodes, nodeKey("a"), []byte("3"))
	w.Delete("west", wire.Nodes, nodeKey("b"))
	q := w.take()
	var got []string
	for _, o := range q {
		v := string(o.val)
		if o.del {
			v = "delete"
		}
		got = append(got, strings.TrimPrefix(o.key, "cilium/")+"="+v)
	}
	want := []string{"cache/nodes/v1/west/a=2", "cache/nodes/v1/west/b=1", "synced/west/cilium/cache/nodes/v1=", "cache/nodes/v1/west/a=3", "cache/nodes/v1/west/b=delete"}
	if len(got) != len(want) {
		t.Fatalf("queue %v, want %v", got, want)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("queue[%d] = %q, want %q", i, got[i], want[i])
		}
	}
	if st := w.stats(); st.Coalesced != 1 {
		t.Errorf("coalesced %d, want 1", st.Coalesced)
	}
	bs := w.batches(q)
	if len(bs) != 2 || len(bs[0]) != 3 || len(bs[1]) != 2 {
		t.Errorf("batches of %v, want [3 2] (the canary ends the first with its entries; a's next write is a key the first has)", batchLens(bs))
	}
}

// A restarted cache that adopted its previous run's lease writes only the
// entries that changed; a previous entry on another lease, or deleted
// since, is written again.
func TestWriterSkipsUnchangedOnAdoptedLease(t *testing.T) {
	const adopted, other = clientv3.LeaseID(7), clientv3.LeaseID(9)
	p := previous{entries: map[string]kindSets{}, remotes: map[string]bool{}}
	for key, e := range map[string]prevEntry{
		cacheNodeKey(t, "same"):    {sum: valueSum([]byte("v")), lease: adopted},
		cacheNodeKey(t, "changed"): {sum: valueSum([]byte("old")), lease: adopted},
		cacheNodeKey(t, "other"):   {sum: valueSum([]byte("v")), lease: other},
		cacheNodeKey(t, "deleted"): {sum: valueSum([]byte("v")), lease: adopted},
		cacheNodeKey(t, "gone"):    {sum: valueSum([]byte("v")), lease: adopted},
	} {
		if !p.record(key, e) {
			t.Fatalf("%s not recognised as the cache's", key)
		}
	}
	w := testWriter(100, 1<<20)
	w.start(nil, adopted, p, map[string]bool{"west": true})
	for _, n := range []string{"same", "changed", "other"} {
		w.Upsert("west", wire.Nodes, nodeKey(n), []byte("v"))
	}
	w.Delete("west", wire.Nodes, nodeKey("deleted"))
	w.Upsert("west", wire.Nodes, nodeKey("deleted"), []byte("v"))
	w.Listed("west", wire.Nodes)
	var got []string
	for _, o := range w.take() {
		v := string(o.val)
		if o.del {
			v = "delete"
		}
		if o.barrier {
			v = "canary"
		}
		got = append(got, strings.TrimPrefix(o.key, "cilium/cache/nodes/v1/west/")+"="+v)
	}
	want := []string{"changed=v", "other=v", "deleted=v", "gone=delete", "cilium/synced/west/cilium/cache/nodes/v1=canary"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("queue %v, want %v", got, want)
	}
	if st := w.stats(); st.Unchanged != 1 {
		t.Errorf("unchanged %d, want 1", st.Unchanged)
	}
}

func cacheNodeKey(t *testing.T, n string) string {
	ck, err := agentsync.CacheKey(wire.Nodes, "west", nodeKey(n))
	if err != nil {
		t.Fatal(err)
	}
	return ck
}

// A key written twice across segments goes in two transactions (etcd
// refuses a key twice in one).
func TestWriterCutsAtRepeatedKey(t *testing.T) {
	w := testWriter(100, 1<<20)
	w.Upsert("west", wire.Nodes, nodeKey("a"), []byte("1"))
	w.Listed("west", wire.Nodes)
	w.Upsert("west", wire.Nodes, nodeKey("b"), []byte("1"))
	w.Listed("west", wire.Nodes)
	w.Delete("west", wire.Nodes, nodeKey("a"))
	if lens := batchLens(w.batches(w.take())); len(lens) != 2 || lens[0] != 3 || lens[1] != 2 {
		t.Errorf("batches %v, want [3 2]: a, canary, b | canary again, a's delete", lens)
	}
}

func batchLens(bs [][]clientv3.Op) []int {
	var out []int
	for _, b := range bs {
		out = append(out, len(b))
	}
	return out
}

// Transactions are bounded in operations and bytes, and a prefix deletion
// goes alone (etcd refuses puts inside a range deleted in the same
// transaction).
func TestWriterBatchBounds(t *testing.T) {
	w := testWriter(3, 200)
	for _, n := range []string{"a", "b", "c", "d"} {
		w.Upsert("west", wire.Nodes, nodeKey(n), []byte("x"))
	}
	w.Upsert("west", wire.Nodes, nodeKey("big"), []byte(strings.Repeat("v", 150)))
	w.Drained("west")
	w.Upsert("west", wire.Nodes, nodeKey("a"), []byte("again"))
	bs := w.batches(w.take())
	lens := batchLens(bs)
	// a b c | d | big | 4 kinds' prefixes, the canaries' prefix, each alone | config delete + status delete | a
	want := []int{3, 1, 1, 1, 1, 1, 1, 1, 3}
	if len(lens) != len(want) {
		t.Fatalf("batches %v, want %v", lens, want)
	}
	for i := range want {
		if lens[i] != want[i] {
			t.Fatalf("batches %v, want %v", lens, want)
		}
	}
}

// What a previous run left is kept until its remote's kind is listed
// again; then what was not rewritten is deleted before the canary.
func TestWriterSweepsPreviousRunAfterList(t *testing.T) {
	p := previous{entries: map[string]kindSets{}, remotes: map[string]bool{}}
	for _, k := range []string{
		"cilium/cache/nodes/v1/west/a", "cilium/cache/nodes/v1/west/gone", "cilium/cache/ip/v1/west/10.0.0.1",
		"cilium/cache/nodes/v1/old/x", "cilium/synced/old/cilium/cache/nodes/v1", agentsync.CacheStatusKey("old"),
	} {
		if !p.add(k) {
			t.Fatalf("%s not recognised as the cache's", k)
		}
	}
	for _, k := range []string{"cilium/state/nodes/v1/west/a", "cilium/synced/west/cilium/state/nodes/v1", "cilium/cache/endpointslices/v1/west/x"} {
		if p.add(k) {
			t.Errorf("%s taken as the cache's", k)
		}
	}
	w := testWriter(100, 1<<20)
	w.start(nil, 0, p, map[string]bool{"west": true})
	q := w.take()
	if len(q) != 7 || !q[0].prefix { // old: 4 kinds and the canaries (prefixes), config, status
		t.Errorf("a remote no longer configured is not drained at start: %+v", q)
	}
	if st := w.stats(); st.PreviousLeft != 2 {
		t.Errorf("previous kinds left %d, want 2 (west's nodes and ipcache)", st.PreviousLeft)
	}
	w.Upsert("west", wire.Nodes, nodeKey("a"), []byte("1"))
	w.Listed("west", wire.Nodes)
	q = w.take()
	if len(q) != 3 || q[1].key != "cilium/cache/nodes/v1/west/gone" || !q[1].del || !q[2].barrier {
		t.Errorf("after west's nodes were listed: %+v, want a rewritten, gone deleted, then the canary", q)
	}
	select {
	case <-w.done:
		t.Error("previous run done while west's ipcache was not listed again")
	default:
	}
	w.Listed("west", wire.IPCache)
	q = w.take()
	if len(q) != 2 || q[0].key != "cilium/cache/ip/v1/west/10.0.0.1" || !q[0].del {
		t.Errorf("after west's ipcache was listed: %+v", q)
	}
	select {
	case <-w.done:
	default:
		t.Error("previous run not done after every kind was listed again")
	}
}

func FuzzPreviousAdd(f *testing.F) {
	f.Add("cilium/cache/nodes/v1/west/a")
	f.Add("cilium/cache/identities/v1/west/id/5")
	f.Add("cilium/synced/west/cilium/cache/ip/v1")
	f.Add("cilium/cache/.status/west")
	f.Add("cilium/cache/ip/v1//x")
	f.Fuzz(func(t *testing.T, key string) {
		p := previous{entries: map[string]kindSets{}, remotes: map[string]bool{}}
		p.add(key)
		for remote, sets := range p.entries {
			for k, keys := range sets {
				for ck := range keys {
					if !strings.HasPrefix(ck, agentsync.CacheListPrefix(k, remote)) {
						t.Fatalf("%q recorded as %s of %q", ck, k, remote)
					}
				}
			}
		}
	})
}

// BenchmarkWriterQueue: one accepted ipcache entry queued (on the list or
// watch goroutine, under its kind's lock) and later cut into transactions.
func BenchmarkWriterQueue(b *testing.B) {
	w := testWriter(DefaultTxnOps, DefaultTxnBytes)
	val := []byte(`{"IP":"10.2.1.5","HostIP":"192.168.2.1","ID":131077,"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"checkout-1"}`)
	keys := make([]string, 4096)
	for i := range keys {
		keys[i] = wire.IPCacheKey(fmt.Sprintf("10.2.%d.%d", i>>8, i&255))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		w.Upsert("west", wire.IPCache, keys[i%len(keys)], val)
		if i%len(keys) == len(keys)-1 {
			w.batches(w.take())
		}
	}
}

// The previous run's ranges, read at once, cover cilium/cache/ whole and
// without overlap, cut at every configured remote's list prefixes.
func TestCacheRangesCoverTheCache(t *testing.T) {
	rs := cacheRanges(map[string]bool{"west": true, "east": true})
	if rs[0][0] != "cilium/cache/" || rs[len(rs)-1][1] != clientv3.GetPrefixRangeEnd("cilium/cache/") {
		t.Fatalf("ranges %v do not span cilium/cache/", rs)
	}
	for i := 1; i < len(rs); i++ {
		if rs[i][0] != rs[i-1][1] || rs[i][0] >= rs[i][1] {
			t.Fatalf("ranges %d and %d not contiguous: %v", i-1, i, rs)
		}
	}
	if len(rs) != 1+2*len(wire.Kinds) {
		t.Errorf("%d ranges, want one more than the remotes' %d prefixes", len(rs), 2*len(wire.Kinds))
	}
}
