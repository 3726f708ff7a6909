package merge

import (
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/statesource"
)

// flakyWriter fails the first n writes, then passes them to the datapath.
type flakyWriter struct {
	datapath.Datapath
	fail int
}

func (f *flakyWriter) err() error {
	if f.fail > 0 {
		f.fail--
		return errors.New("injected failure")
	}
	return nil
}

func (f *flakyWriter) UpsertIPCache(p netip.Prefix, e datapath.IPCacheEntry) error {
	if err := f.err(); err != nil {
		return err
	}
	return f.Datapath.UpsertIPCache(p, e)
}

func (f *flakyWriter) UpsertService(fe datapath.Frontend, b []datapath.Backend) error {
	if err := f.err(); err != nil {
		return err
	}
	return f.Datapath.UpsertService(fe, b)
}

// A write that failed is retried until the datapath matches the desired state.
func TestRetryFailedWrites(t *testing.T) {
	mem := datapath.NewMemory()
	fw := &flakyWriter{Datapath: mem, fail: 2}
	m := newMerger(fw, "east", 1, slog.New(slog.NewTextHandler(io.Discard, nil)))
	st, err := statesource.Parse("s", []byte(`
nodes: [{name: n1, ips: [192.168.1.1], podCIDRs: [10.1.1.0/24]}]
endpoints: [{namespace: a, pod: p, ip: 10.1.1.5, node: n1, labels: {app: x}}]
services: [{namespace: a, name: s, clusterIP: 10.96.0.1, ports: [{port: 80}], selector: {app: x}, annotations: {service.cilium.io/global: "true"}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	m.SetLocal(st) // fails (1)
	pfx := netip.MustParsePrefix("10.2.0.5/32")
	m.SetNodeRanges(2, nil, []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")})                              // west's node owns it
	m.setIP("west", pfx, &ipClaim{clusterID: 2, entry: datapath.IPCacheEntry{Identity: 131100, ClusterID: 2}}) // fails (2)
	if n, _ := m.WriteErrors(); n != 2 {
		t.Fatalf("write errors = %d, want 2", n)
	}
	if svcs, _ := mem.Services(); len(svcs) != 0 {
		t.Fatalf("nothing should be written yet: %v", svcs)
	}
	if left := m.RetryFailed(); left != 0 {
		t.Fatalf("%d still failing after retry", left)
	}
	svcs, _ := mem.Services()
	ips, _ := mem.IPCache()
	if len(svcs) != 1 || len(ips) != 1 {
		t.Errorf("after retry: %d services, %d ipcache entries; want 1 and 1", len(svcs), len(ips))
	}
	if m.RetryFailed() != 0 {
		t.Error("a second retry has nothing to do")
	}
}
