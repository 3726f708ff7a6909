package localmesh

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/statesource"
)

// floodKeys is how many junk keys the malicious remote publishes.
const floodKeys = 1_000_000

// Test 6: a malicious remote (the test writes into its store with admin
// rights) publishes entries for other clusters, identities outside its
// range, a 5 MiB value (over the 4 MiB agents accept), a million tiny junk keys, invalid UTF-8 and JSON,
// keys with ".." and extra segments. Each is rejected and counted; the
// agent's memory stays bounded and another remote keeps syncing meanwhile.
func TestHeavyMaliciousRemoteFlood(t *testing.T) {
	testenv.Heavy(t)
	e := newFaultEnv(t)
	westFile := filepath.Join(e.dir, "west.json")
	writeJSON(t, westFile, SampleState(2))
	westSpec := processSpec{Cluster: "west", ID: 2, Listen: freeAddr(t), CertDir: e.west.Dir, Peers: []string{"east"}, StateFile: westFile}
	startAPIServerProcess(t, westSpec) // its etcd's memory is not the agent's
	e.pointAt(t, westSpec.Listen)

	north, err := e.mesh.IssueBundle(filepath.Join(e.dir, "north"), "north", []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	northFile := filepath.Join(e.dir, "north.json")
	writeJSON(t, northFile, SampleState(3))
	northSpec := processSpec{Cluster: "north", ID: 3, Listen: freeAddr(t), CertDir: north.Dir, Peers: []string{"east"}, StateFile: northFile}
	startAPIServerProcess(t, northSpec)
	e.pointRemote(t, "north", northSpec.Listen)

	rec := newRecorder()
	a := e.startAgent(t, rec, nil)
	testenv.WaitFor(t, wait, "west and north synced", func() bool { return westOf(a).Ready && remoteOf(a, "north").Ready })
	heapBefore := heapAlloc()

	admin := westAdmin(t, e, westSpec.Listen)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bad := map[string]string{
		"cilium/state/nodes/v1/west/evil":               `{"Name":"evil","Cluster":"east","ClusterID":1}`,
		"cilium/state/nodes/v1/west/a/b":                `{"Name":"a","Cluster":"west","ClusterID":2}`,
		"cilium/state/nodes/v1/west/..":                 `{"Name":"..","Cluster":"west","ClusterID":2}`,
		"cilium/state/services/v1/west/shop/../x":       `{}`,
		"cilium/state/services/v1/west/shop/evil":       `{"cluster":"west","namespace":"shop","name":"evil","clusterID":9}`,
		"cilium/state/identities/v1/id/65600":           "k8s:app=x;k8s:io.cilium.k8s.policy.cluster=west;",
		"cilium/state/ip/v1/default/10.9.0.1":           `{"IP":"10.9.0.1","ID":65600}`,
		"cilium/state/ip/v1/default/10.9.0.2":           "\xff\xfe\xfd",
		"cilium/state/ip/v1/default/10.9.0.3":           `{"IP":"10.9.0.3","ID":131100`,
		"cilium/state/ip/v1/default/10.9.0.4":           `"` + strings.Repeat("A", 5<<20) + `"`,
		"cilium/state/ip/v1/default/10.9.0.5/extra/seg": `{"IP":"10.9.0.5","ID":131100}`,
	}
	for k, v := range bad {
		if _, err := admin.Put(ctx, k, v); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
	}
	// A million tiny keys: half not keys of the layout, half with values that
	// are not JSON.
	start := time.Now()
	for i := 0; i < floodKeys; {
		ops := make([]clientv3.Op, 0, 4000)
		for ; len(ops) < 4000 && i < floodKeys; i++ {
			key := fmt.Sprintf("cilium/state/ip/v1/default/junk-%d", i)
			if i%2 == 1 {
				key = fmt.Sprintf("cilium/state/ip/v1/default/10.%d.%d.%d", 200+i>>16&0x1f, i>>8&0xff, i&0xff)
			}
			ops = append(ops, clientv3.OpPut(key, "x"))
		}
		if _, err := admin.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	wrote := time.Since(start)
	t.Logf("wrote %d junk keys in %s", floodKeys, wrote.Round(time.Millisecond))

	// Meanwhile north changes: the change must arrive.
	ns := SampleState(3)
	ns.Endpoints = append(ns.Endpoints, &statesource.Endpoint{Namespace: "shop", Pod: "late", Node: "node-1",
		IP: netip.MustParseAddr("10.3.1.200"), Labels: map[string]string{"app": "late"}})
	writeJSON(t, northFile, ns)
	testenv.WaitFor(t, wait, "north's change arrives during the flood", func() bool {
		ips, _ := rec.IPCache()
		_, ok := ips[netip.MustParsePrefix("10.3.1.200/32")]
		return ok
	})

	// The agent reads the flood about as fast as it was written (a second
	// after the writes on an idle machine); a machine busy with other work
	// slows both, so the deadline grows with the writes' time. A relist (a
	// reconnect, or the remote compacting revisions the watch had not read
	// yet) reads the keys again, and each read is counted: then the count is
	// at least, not exactly, one per bad entry.
	want := uint64(len(bad) + floodKeys)
	waitStart := time.Now()
	defer func() {
		if t.Failed() {
			r := westOf(a)
			t.Logf("rejections counted after %s: %d (by reason %v; lists %v, failures %d)",
				time.Since(waitStart).Round(time.Second), r.RejectedTotal(), r.Rejected, r.Lists, r.Failures)
		}
	}()
	testenv.WaitFor(t, 3*time.Minute+2*wrote, fmt.Sprintf("%d rejections counted", want), func() bool {
		return westOf(a).RejectedTotal() >= want
	})
	r := westOf(a)
	relisted := r.Failures > 0 || r.Lists["ipcache"] > 1
	if got := r.RejectedTotal(); got != want && !relisted {
		t.Errorf("%d rejections counted without a relist, want %d", got, want)
	}
	t.Logf("rejections by reason: %v", r.Rejected)
	// Half the junk keys are no address at all (malformed keys), half are
	// addresses with values that are not JSON.
	if !relisted && (r.Rejected["value_too_large"] != 1 || r.Rejected["malformed_value"] < floodKeys/2 || r.Rejected["malformed_key"] != 4+floodKeys/2) ||
		relisted && (r.Rejected["value_too_large"] < 1 || r.Rejected["malformed_value"] < floodKeys/2 || r.Rejected["malformed_key"] < 4+floodKeys/2) {
		t.Errorf("rejections: %v", r.Rejected)
	}
	if ok, _ := ipcacheEquals(rec, 2, prefixesOf(SampleState(2))); !ok {
		t.Error("west's valid entries changed, or a rejected one reached the datapath")
	}
	if r.Nodes != 2 || r.Services != 1 || r.Identities != 2 {
		t.Errorf("rejected entries were kept as state: %+v", r)
	}
	grew := int64(heapAlloc()) - int64(heapBefore)
	t.Logf("agent heap grew by %.1f MB over the flood", float64(grew)/(1<<20))
	if grew > 64<<20 {
		t.Errorf("agent heap grew by %d MB over the flood: rejected entries must not be kept", grew>>20)
	}
}

func heapAlloc() uint64 {
	runtime.GC()
	runtime.GC() // the second clears sync.Pool victims
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
