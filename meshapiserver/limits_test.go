package meshapiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/clustermesh/clustermesh/ca"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/statesource"
	"github.com/clustermesh/clustermesh/wire"
)

// bigState is a state of n endpoints on 50 nodes, spread evenly over
// services global services (selector app=svc-<i>) with the given number of
// named ports each.
func bigState(n, services, ports int) []byte {
	st := statesource.State{}
	for i := range 50 {
		st.Nodes = append(st.Nodes, statesource.Node{
			Name: fmt.Sprintf("node-%d", i), IPs: []netip.Addr{netip.AddrFrom4([4]byte{192, 168, 0, byte(i + 1)})},
		})
	}
	for i := range n {
		st.Endpoints = append(st.Endpoints, &statesource.Endpoint{
			Namespace: "shop", Pod: fmt.Sprintf("pod-%d", i),
			IP:     netip.AddrFrom4([4]byte{10, byte(1 + i>>16), byte(i >> 8), byte(i)}),
			Node:   fmt.Sprintf("node-%d", i%50),
			Labels: map[string]string{"app": fmt.Sprintf("svc-%d", i%services)},
		})
	}
	for s := range services {
		svc := statesource.Service{
			Namespace: "shop", Name: fmt.Sprintf("svc-%d", s), ClusterIP: netip.AddrFrom4([4]byte{10, 96, 0, byte(s + 1)}),
			Selector:    map[string]string{"app": fmt.Sprintf("svc-%d", s)},
			Annotations: map[string]string{wire.AnnotationGlobal: "true"},
		}
		for p := range ports {
			svc.Ports = append(svc.Ports, statesource.ServicePort{Name: fmt.Sprintf("port-%d", p), Port: uint16(80 + p), TargetPort: uint16(8080 + p)})
		}
		st.Services = append(st.Services, svc)
	}
	b, err := json.Marshal(st)
	if err != nil {
		panic(err)
	}
	return b
}

// count returns how many keys are under prefix.
func count(t *testing.T, cli *clientv3.Client, prefix string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("count %s: %v", prefix, err)
	}
	return resp.Count
}

// serviceBackends returns the number of backends of the published service
// shop/name, -1 when it is not published.
func serviceBackends(t *testing.T, cli *clientv3.Client, name string) int {
	t.Helper()
	resp, err := get(t, cli, wire.ServiceKey("east", "shop", name))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return -1
	}
	svc, err := wire.DecodeService(wire.Cluster{Name: "east", ID: 1, MaxConnectedClusters: 255}, string(resp.Kvs[0].Key), resp.Kvs[0].Value)
	if err != nil {
		t.Fatalf("published service %s does not decode as an agent decodes it: %v", name, err)
	}
	return len(svc.Backends)
}

// TestLimitsChain checks the chain of size limits in config.go with the
// encodings etcd uses, then sends the largest transaction the publisher
// builds through the real admin client to a real etcd.
func TestLimitsChain(t *testing.T) {
	maxKey := strings.Repeat("k", wire.MaxKeyBytes)
	maxVal := make([]byte, wire.MaxValueBytes)
	maxEntry := putOp(maxKey, maxVal, math.MaxInt64)
	if maxEntry.bytes > txnBudgetBytes {
		t.Errorf("the largest entry agents accept takes %d bytes in a transaction, over the budget %d", maxEntry.bytes, txnBudgetBytes)
	}
	if txnBudgetBytes > clientMaxSendBytes {
		t.Errorf("transaction budget %d > client send limit %d", txnBudgetBytes, clientMaxSendBytes)
	}
	if clientMaxSendBytes+raftRequestOverhead > maxRequestBytes {
		t.Errorf("client send limit %d + raft overhead %d > etcd's MaxRequestBytes %d", clientMaxSendBytes, raftRequestOverhead, maxRequestBytes)
	}
	if txnBudgetOps > maxTxnOps {
		t.Errorf("%d ops per transaction > etcd's %d", txnBudgetOps, maxTxnOps)
	}

	// Entries of a sixth of the budget: batches fill the byte budget, not
	// the op budget. Their sizes add up to the TxnRequest gRPC sends.
	var ops []txnOp
	size := txnBudgetBytes / 6
	for i := range 12 {
		ops = append(ops, putOp(fmt.Sprintf("cilium/state/test/%03d", i), make([]byte, size), math.MaxInt64))
	}
	ops = append(ops, deleteOp("cilium/state/test/deleted"))
	bs := batches(ops)
	if len(bs) < 3 {
		t.Fatalf("%d batches of 13 ops of %d bytes, want them split by the %d-byte budget", len(bs), size, txnBudgetBytes)
	}
	for i, b := range bs {
		req := &pb.TxnRequest{}
		sum := 0
		for _, o := range b {
			req.Success = append(req.Success, requestOp(t, o))
			sum += o.bytes
		}
		if got := proto.Size(req); got != sum || got > txnBudgetBytes {
			t.Errorf("batch %d: TxnRequest of %d bytes, measured %d, budget %d", i, got, sum, txnBudgetBytes)
		}
		// etcd applies MaxRequestBytes to the raft request wrapping it.
		raft := &pb.InternalRaftRequest{
			Header: &pb.RequestHeader{ID: math.MaxUint64, Username: AdminUser(strings.Repeat("c", 32)), AuthRevision: math.MaxUint64},
			Txn:    req,
		}
		if over := proto.Size(raft) - proto.Size(req); over > raftRequestOverhead {
			t.Errorf("raft request overhead %d > %d", over, raftRequestOverhead)
		}
	}

	// The real thing: a transaction of exactly the budget, through the
	// admin client, into etcd.
	f := newFixture(t)
	f.start(t, "127.0.0.1:0")
	tlsCfg, err := ca.ClientTLSConfig(f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	cli, err := newAdminClient(context.Background(), []string{f.srv.ClientURL()}, tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	full := []txnOp{putOp("cilium/state/test/a", make([]byte, wire.MaxValueBytes), lease.ID)}
	used := full[0].bytes
	n := txnBudgetBytes - used - 64
	n -= putOp("cilium/state/test/c", make([]byte, n), lease.ID).bytes - n - 64 // the overhead of an op of about that size
	last := putOp("cilium/state/test/c", make([]byte, n), lease.ID)
	for used+last.bytes > txnBudgetBytes {
		n--
		last = putOp("cilium/state/test/c", make([]byte, n), lease.ID)
	}
	full = append(full, last)
	if b := batches(full); len(b) != 1 {
		t.Fatalf("%d bytes in %d batches, want one", used+last.bytes, len(b))
	}
	t.Logf("one transaction of %d bytes (budget %d)", used+last.bytes, txnBudgetBytes)
	p := newPublisher(cli, f.srv.cfg.cluster(), false, f.srv.cfg.Logger, prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x"}))
	p.lease = lease.ID
	if err := p.commit(ctx, full); err != nil {
		t.Fatalf("the largest transaction the publisher builds: %v", err)
	}
	if n := count(t, cli, "cilium/state/test/"); n != 2 {
		t.Errorf("%d entries written, want 2", n)
	}
}

// requestOp is the RequestOp clientv3 sends for o.
func requestOp(t *testing.T, o txnOp) *pb.RequestOp {
	t.Helper()
	switch {
	case o.op.IsPut():
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{
			Key: o.op.KeyBytes(), Value: o.op.ValueBytes(), Lease: math.MaxInt64,
		}}}
	case o.op.IsDelete():
		return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: o.op.KeyBytes()}}}
	}
	t.Fatalf("unexpected op %v", o.op)
	return nil
}

// TestHeavyPublishesLargeStateAtStart: 40,000 endpoints behind 2 services
// at start (a 2.4 MB transaction used to exceed the client's 2 MiB and end
// the apiserver): everything published, each service with its 20,000
// backends (1.1 MB, within what agents accept).
func TestHeavyPublishesLargeStateAtStart(t *testing.T) {
	testenv.Heavy(t)
	f := newFixture(t)
	writeFile(t, f.state, string(bigState(40000, 2, 1)))
	f.start(t, "127.0.0.1:0")
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	if n := count(t, admin, wire.IPCache.ListPrefix("east")); n != 40000 {
		t.Errorf("%d ipcache entries, want 40000", n)
	}
	if n := count(t, admin, wire.Identities.ListPrefix("east")); n != 2 {
		t.Errorf("%d identities, want 2", n)
	}
	if n := count(t, admin, wire.Nodes.ListPrefix("east")); n != 50 {
		t.Errorf("%d nodes, want 50", n)
	}
	for _, name := range []string{"svc-0", "svc-1"} {
		if n := serviceBackends(t, admin, name); n != 20000 {
			t.Errorf("service %s published with %d backends, want 20000", name, n)
		}
	}
	if st := f.srv.Status(); st.Publish.Refused != 0 || st.PublishFailures != 0 {
		t.Errorf("refused %d, failures %d (%s), want none", st.Publish.Refused, st.PublishFailures, st.PublishError)
	}
}

// TestHeavyRefusesServiceOverTheAgentsLimit: a service of 100,000 backends
// (5.5 MB) is over what every agent accepts: refused and reported, not
// published for every agent to reject; its endpoints are published.
func TestHeavyRefusesServiceOverTheAgentsLimit(t *testing.T) {
	testenv.Heavy(t)
	f := newFixture(t)
	writeFile(t, f.state, string(bigState(100000, 1, 1)))
	f.start(t, "127.0.0.1:0")
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	if n := count(t, admin, wire.IPCache.ListPrefix("east")); n != 100000 {
		t.Errorf("%d ipcache entries, want 100000", n)
	}
	st := f.srv.Status()
	if st.Publish.Refused != 1 || st.Publish.RefusedTotal["value_too_large"] != 1 {
		t.Fatalf("refused %d (%v), want the service as value_too_large", st.Publish.Refused, st.Publish.RefusedTotal)
	}
	for _, r := range st.Publish.RefusedSamples {
		if !strings.HasPrefix(r.Key, wire.Services.ListPrefix("east")) || r.Bytes <= wire.MaxValueBytes || r.Reason != "value_too_large" {
			t.Errorf("refused %+v, want a service over %d bytes", r, wire.MaxValueBytes)
		}
	}
	if n := serviceBackends(t, admin, "svc-0"); n != -1 {
		t.Errorf("service svc-0 published with %d backends: every agent rejects it", n)
	}
	if got := gather(t, f.srv)["clustermesh_apiserver_entries_refused"]; got != 1 {
		t.Errorf("clustermesh_apiserver_entries_refused = %v, want 1", got)
	}
}

// TestHeavyPublishesLargeValidServices: 28,000 endpoints behind 4 services
// of 3 ports, each service entry about 1 MB, all in the first publish
// (3.8 MB, over clientv3's default 2 MiB): published.
func TestHeavyPublishesLargeValidServices(t *testing.T) {
	testenv.Heavy(t)
	f := newFixture(t)
	writeFile(t, f.state, string(bigState(28000, 4, 3)))
	f.start(t, "127.0.0.1:0")
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	for s := range 4 {
		if n := serviceBackends(t, admin, fmt.Sprintf("svc-%d", s)); n != 7000 {
			t.Errorf("svc-%d: %d backends, want 7000", s, n)
		}
	}
	if n := count(t, admin, wire.IPCache.ListPrefix("east")); n != 28000 {
		t.Errorf("%d ipcache entries, want 28000", n)
	}
	if st := f.srv.Status(); st.Publish.Refused != 0 || st.PublishFailures != 0 {
		t.Errorf("refused %d, failures %d (%s), want none", st.Publish.Refused, st.PublishFailures, st.PublishError)
	}
}

// TestHeavyPublishesStateGrowingWhileRunning: from 200 to 50,000 endpoints
// behind 2 services while running (867 ops, 2.85 MB used to end the
// apiserver), then to 160,000 (services of 80,000 backends, over what
// agents accept), then down to 30,000. The endpoints are published;
// services over the limit are refused and keep the value they had; once
// they fit again they are published.
func TestHeavyPublishesStateGrowingWhileRunning(t *testing.T) {
	testenv.Heavy(t)
	f := newFixture(t)
	writeFile(t, f.state, string(bigState(200, 2, 1)))
	f.start(t, "127.0.0.1:0")
	admin := clientFor(t, f.srv.ClientURL(), f.east.AdminCert(), f.east.AdminKey(), f.east.CAFile())
	if n := serviceBackends(t, admin, "svc-0"); n != 100 {
		t.Fatalf("svc-0: %d backends, want 100", n)
	}

	writeFile(t, f.state, string(bigState(50000, 2, 1)))
	testenv.WaitFor(t, 2*time.Minute, "50,000 ipcache entries and services of 25,000 backends published", func() bool {
		f.running(t)
		return count(t, admin, wire.IPCache.ListPrefix("east")) == 50000 &&
			serviceBackends(t, admin, "svc-0") == 25000 && serviceBackends(t, admin, "svc-1") == 25000
	})

	writeFile(t, f.state, string(bigState(160000, 2, 1)))
	testenv.WaitFor(t, 2*time.Minute, "160,000 ipcache entries published", func() bool {
		f.running(t)
		return count(t, admin, wire.IPCache.ListPrefix("east")) == 160000
	})
	testenv.WaitFor(t, 10*time.Second, "the 2 services reported refused", func() bool {
		return f.srv.Status().Publish.Refused == 2
	})
	for _, name := range []string{"svc-0", "svc-1"} {
		if n := serviceBackends(t, admin, name); n != 25000 {
			t.Errorf("%s: %d backends, want the 25,000 it had before its entry grew over the limit", name, n)
		}
	}
	if st := f.srv.Status(); st.PublishFailures != 0 {
		t.Errorf("%d publish failures (%s)", st.PublishFailures, st.PublishError)
	}

	writeFile(t, f.state, string(bigState(30000, 2, 1)))
	// Puts are committed before deletes: wait for both.
	testenv.WaitFor(t, 2*time.Minute, "30,000 ipcache entries and the services published again with 15,000 backends each", func() bool {
		f.running(t)
		return serviceBackends(t, admin, "svc-0") == 15000 && serviceBackends(t, admin, "svc-1") == 15000 &&
			count(t, admin, wire.IPCache.ListPrefix("east")) == 30000
	})
	testenv.WaitFor(t, 10*time.Second, "no entry reported refused", func() bool {
		st := f.srv.Status()
		return st.Publish.Refused == 0 && len(st.Publish.RefusedSamples) == 0
	})
}
