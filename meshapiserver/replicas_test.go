package meshapiserver

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/internal/etcdtest"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// The tests of an external etcd cluster (docs/external-etcd.md): a real
// three-member cluster (etcdcluster_test.go), apiserver replicas in this
// process, and a reader that watches the store as an agent's session does
// (user remote-west, the wire decoders).

var eastCluster = wire.Cluster{Name: "east", ID: 1, MaxConnectedClusters: 255}

// replica is one apiserver replica running in the test.
type replica struct {
	name   string
	srv    *Server
	cancel context.CancelFunc
	done   chan error
}

// startReplica runs a replica of east's apiserver on cl, publishing the
// state file state, with an election session of ttl.
func startReplica(t *testing.T, f *fixture, cl *etcdtest.Cluster, name, state string, ttl time.Duration, afterTxn func()) *replica {
	t.Helper()
	return startReplicaWith(t, f, cl, name, state, ttl, afterTxn, nil)
}

// startReplicaWith is startReplica with mod applied to the config.
func startReplicaWith(t *testing.T, f *fixture, cl *etcdtest.Cluster, name, state string, ttl time.Duration, afterTxn func(), mod func(*Config)) *replica {
	t.Helper()
	// The replica's log is shown when the test fails (and always with
	// CLUSTERMESH_TEST_LOG set).
	var out io.Writer = &lockedBuffer{}
	if os.Getenv("CLUSTERMESH_TEST_LOG") != "" {
		out = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(out, nil)).With("test", t.Name())
	if b, ok := out.(*lockedBuffer); ok {
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("replica %s:\n%s", name, b.String())
			}
		})
	}
	cfg := Config{
		ClusterName: "east", ClusterID: 1, CAFile: f.east.CAFile(),
		AdminCertFile: f.east.AdminCert(), AdminKeyFile: f.east.AdminKey(),
		EtcdEndpoints: cl.Endpoints(), ReplicaName: name, ElectionTTL: ttl,
		Peers:  []string{"west"},
		Source: &statesource.File{Path: state, PollInterval: 10 * time.Millisecond},
		Logger: log,
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.afterTxn = afterTxn
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{name: name, srv: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- srv.Run(ctx) }()
	select {
	case <-srv.Serving():
	case err := <-r.done:
		t.Fatalf("replica %s stopped: %v", name, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("replica %s not serving after 30s", name)
	}
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop shuts the replica down cleanly (it resigns).
func (r *replica) stop(t *testing.T) {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	if err := <-r.done; err != nil {
		t.Errorf("replica %s Run: %v", r.name, err)
	}
}

// kill ends the replica as SIGKILL would: no resignation, no revoked
// session; its leases expire. Safe to call from a publishing hook.
func (r *replica) kill() {
	r.srv.abandon.Store(true)
	r.cancel()
}

// leads reports whether the replica leads and has published its desired
// set (canaries written) in its current term.
func (r *replica) leads() bool {
	st := r.srv.Status()
	return st.Role == RoleLeader && st.Publish.CanariesSet && st.PublishError == ""
}

// replicaState is a state of n endpoints from first on 10 nodes, with the
// labels app=a<i%50> below split and app=b<i%20> from split on.
func replicaState(first, n, split int) string {
	var b strings.Builder
	b.WriteString("nodes:\n")
	for j := range 10 {
		fmt.Fprintf(&b, "- {name: east-%d, ips: [192.168.1.%d], podCIDRs: [10.%d.0.0/16]}\n", j, j+1, j)
	}
	b.WriteString("namespaces:\n- {name: shop}\nendpoints:\n")
	for i := first; i < first+n; i++ {
		app := fmt.Sprintf("a%d", i%50)
		if i >= split {
			app = fmt.Sprintf("b%d", i%20)
		}
		fmt.Fprintf(&b, "- {namespace: shop, pod: p%d, ip: %s, node: east-%d, labels: {app: %s}}\n", i, endpointIP(i), i%10, app)
	}
	b.WriteString(`services:
- namespace: shop
  name: web
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}]
  selector: {app: a1}
  annotations: {service.cilium.io/global: "true"}
`)
	return b.String()
}

func endpointIP(i int) string { return fmt.Sprintf("10.%d.%d.%d", i%10, i/10/250, i/10%250+1) }

// storeReader watches east's published state and canaries as an agent's
// session does, and records every violation: an entry that must stay
// deleted, a canary deleted, an address or a label set renumbered while
// published, an identity number given other labels while published, an
// entry the agents' decoders reject.
type storeReader struct {
	cli *clientv3.Client

	mu             sync.Mutex
	kv             map[string][]byte
	idOfIP         map[string]uint32
	idOfLabels     map[string]uint32
	labelsOfID     map[uint32]string
	mustStay       map[string]bool
	violations     []string
	violationCount int
	// ipcacheCount and canaryCount count the ipcache entries and the
	// canaries of wire.Kinds in kv.
	ipcacheCount, canaryCount int
}

func startReader(t *testing.T, f *fixture, cl *etcdtest.Cluster) *storeReader {
	t.Helper()
	r := &storeReader{
		cli: cl.Client(f.west.RemoteCert(), f.west.RemoteKey()), kv: map[string][]byte{},
		idOfIP: map[string]uint32{}, idOfLabels: map[string]uint32{}, labelsOfID: map[uint32]string{}, mustStay: map[string]bool{},
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, prefix := range []string{wire.StatePrefix, wire.SyncedClusterPrefix("east")} {
		resp, err := r.cli.Get(ctx, prefix, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			r.put(string(kv.Key), kv.Value)
		}
		wch := r.cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for wr := range wch {
				if err := wr.Err(); err != nil {
					if ctx.Err() == nil {
						r.violate("watch of %s ended: %v (a member restart must not lose events)", prefix, err)
					}
					return
				}
				for _, ev := range wr.Events {
					if ev.Type == mvccpb.DELETE {
						r.delete(string(ev.Kv.Key))
					} else {
						r.put(string(ev.Kv.Key), ev.Kv.Value)
					}
				}
			}
		}()
	}
	return r
}

func (r *storeReader) violate(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.violateLocked(format, args...)
}

// violateLocked records a violation (the first 20 of them, and a count).
func (r *storeReader) violateLocked(format string, args ...any) {
	r.violationCount++
	if len(r.violations) < 20 {
		r.violations = append(r.violations, fmt.Sprintf(format, args...))
	}
}

func (r *storeReader) put(key string, val []byte) {
	var err error
	switch {
	case strings.HasPrefix(key, wire.IPCachePrefix+"/"):
		var p *wire.IPIdentityPair
		if p, err = wire.DecodeIPIdentityPair(eastCluster, key, val); err == nil {
			r.mu.Lock()
			if old, ok := r.idOfIP[p.IP.String()]; ok && old != p.ID {
				r.violateLocked("%s renumbered %d → %d", p.IP, old, p.ID)
			}
			r.idOfIP[p.IP.String()] = p.ID
			r.mu.Unlock()
		}
	case strings.HasPrefix(key, wire.IdentitiesPrefix+"/"):
		var id wire.Identity
		if id, err = wire.DecodeIdentity(eastCluster, key, val); err == nil {
			ls := id.Labels.String()
			r.mu.Lock()
			if old, ok := r.labelsOfID[id.ID]; ok && old != ls {
				r.violateLocked("identity %d relabelled %s → %s", id.ID, old, ls)
			}
			if old, ok := r.idOfLabels[ls]; ok && old != id.ID {
				r.violateLocked("labels %s renumbered %d → %d", ls, old, id.ID)
			}
			r.labelsOfID[id.ID], r.idOfLabels[ls] = ls, id.ID
			r.mu.Unlock()
		}
	}
	if err != nil {
		r.violate("entry %s an agent rejects: %v", key, err)
	}
	r.mu.Lock()
	if _, ok := r.kv[key]; !ok {
		r.count(key, 1)
	}
	r.kv[key] = val
	r.mu.Unlock()
}

// count adds d to the counter of key's kind, if it has one.
func (r *storeReader) count(key string, d int) {
	switch {
	case strings.HasPrefix(key, wire.IPCachePrefix+"/"):
		r.ipcacheCount += d
	case isCanary(key):
		r.canaryCount += d
	}
}

// delete removes key; an entry deleted and published again later may
// come back with another number (agents drop it in between).
func (r *storeReader) delete(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mustStay[key] || strings.HasPrefix(key, wire.SyncedPrefix) {
		r.violateLocked("deleted while desired: %s", key)
	}
	switch val := r.kv[key]; {
	case strings.HasPrefix(key, wire.IPCachePrefix+"/"):
		if p, err := wire.DecodeIPIdentityPair(eastCluster, key, val); err == nil {
			delete(r.idOfIP, p.IP.String())
		}
	case strings.HasPrefix(key, wire.IdentitiesPrefix+"/"):
		if id, err := wire.DecodeIdentity(eastCluster, key, val); err == nil {
			delete(r.labelsOfID, id.ID)
			delete(r.idOfLabels, id.Labels.String())
		}
	}
	if _, ok := r.kv[key]; ok {
		r.count(key, -1)
	}
	delete(r.kv, key)
}

// keep marks every key held now as one that must stay, but those drop
// says go.
func (r *storeReader) keep(drop func(key string) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.kv {
		if !strings.HasPrefix(k, wire.SyncedPrefix) && !drop(k) {
			r.mustStay[k] = true
		}
	}
}

// check fails t on any violation, and unless the reader holds exactly the
// entries of endpoints [first, first+n), the identities they use and the
// four canaries.
func (r *storeReader) check(t *testing.T, first, n int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, v := range r.violations {
		t.Error(v)
	}
	if r.violationCount > len(r.violations) {
		t.Errorf("… %d violations in all", r.violationCount)
	}
	used := map[uint32]bool{}
	for k, v := range r.kv {
		if strings.HasPrefix(k, wire.IPCachePrefix+"/") {
			p, _ := wire.DecodeIPIdentityPair(eastCluster, k, v)
			used[p.ID] = true
		}
	}
	identities, canaries := 0, 0
	for k := range r.kv {
		switch {
		case strings.HasPrefix(k, wire.IdentitiesPrefix+"/"):
			identities++
			pk, _ := wire.ParseKey(wire.Identities, "east", k)
			if !used[pk.ID] {
				t.Errorf("identity %d published, used by no endpoint", pk.ID)
			}
		case isCanary(k):
			canaries++
		}
	}
	if identities != len(used) || canaries != len(wire.Kinds) {
		t.Errorf("%d identities for %d used, %d canaries", identities, len(used), canaries)
	}
	want := map[string]bool{}
	for i := first; i < first+n; i++ {
		want[endpointIP(i)] = true
	}
	got := 0
	for k := range r.kv {
		if strings.HasPrefix(k, wire.IPCachePrefix+"/") {
			ip := strings.TrimSuffix(k[strings.LastIndex(k, "/")+1:], "/32")
			if !want[ip] {
				t.Errorf("ipcache entry of %s, not desired", ip)
			}
			got++
		}
	}
	if got != n {
		t.Errorf("%d ipcache entries, want %d", got, n)
	}
}

// holds reports whether the reader holds n ipcache entries, none of the
// keys in gone, and the four canaries.
func (r *storeReader) holds(n int, gone ...string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range gone {
		if _, ok := r.kv[k]; ok {
			return false
		}
	}
	return r.ipcacheCount == n && r.canaryCount == len(wire.Kinds)
}

// isCanary reports whether key is east's synced canary of one of the four
// kinds every cluster publishes.
func isCanary(key string) bool {
	for _, k := range wire.Kinds {
		if key == wire.SyncedKey("east", k) {
			return true
		}
	}
	return false
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
