package k8smcs

import (
	"fmt"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/wire"
)

func spec(cluster, typ string, created time.Time, ports ...int32) *wire.ServiceExportSpec {
	s := &wire.ServiceExportSpec{Cluster: cluster, Namespace: "shop", Name: "checkout", Type: typ, ExportCreationTimestamp: created,
		SessionAffinity: wire.SessionAffinityNone}
	for _, p := range ports {
		s.Ports = append(s.Ports, wire.ServiceExportPort{Name: "http", Protocol: "TCP", Port: p})
	}
	return s
}

func TestResolveOldestWins(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 14, 0, 0, 0, time.UTC)
	ims := resolve([]*wire.ServiceExportSpec{
		spec("north", wire.ImportClusterSetIP, t0.Add(2*time.Second), 9090), // port conflict
		spec("west", wire.ImportClusterSetIP, t0, 8080),                     // oldest
		spec("east", wire.ImportClusterSetIP, t0.Add(time.Second), 8080),
		spec("south", wire.ImportHeadless, t0, 8080), // as old as west: the name decides
	})
	im := ims["shop/checkout"]
	if im == nil || len(ims) != 1 {
		t.Fatalf("imports %v", ims)
	}
	// south and west are equally old: south sorts first and wins.
	if im.Winner != "south" || im.Type != wire.ImportHeadless {
		t.Fatalf("winner %s type %s", im.Winner, im.Type)
	}
	if len(im.Clusters) != 1 || im.Clusters[0] != "south" {
		t.Fatalf("clusters %v", im.Clusters)
	}
	if c := im.Conflicts["west"]; c.Reason != "TypeConflict" {
		t.Fatalf("west's conflict %+v", c)
	}
	ims = resolve([]*wire.ServiceExportSpec{
		spec("north", wire.ImportClusterSetIP, t0.Add(2*time.Second), 9090),
		spec("west", wire.ImportClusterSetIP, t0, 8080),
		spec("east", wire.ImportClusterSetIP, t0.Add(time.Second), 8080),
	})
	im = ims["shop/checkout"]
	if im.Winner != "west" || len(im.Clusters) != 2 || im.Clusters[0] != "east" || im.Clusters[1] != "west" || im.Ports[0].Port != 8080 {
		t.Fatalf("import %+v", im)
	}
	if c := im.Conflicts["north"]; c.Reason != "PortConflict" || len(im.Conflicts) != 1 {
		t.Fatalf("conflicts %+v", im.Conflicts)
	}
	t.Logf("north: %s", im.Conflicts["north"].Message)
}

// BenchmarkResolve: every pass resolves the specs of every cluster; 1,000
// exported services in 3 clusters, one in conflict.
func BenchmarkResolve(b *testing.B) {
	t0 := time.Date(2026, 12, 5, 14, 0, 0, 0, time.UTC)
	var specs []*wire.ServiceExportSpec
	for i := range 1000 {
		for j, c := range []string{"east", "west", "north"} {
			s := spec(c, wire.ImportClusterSetIP, t0.Add(time.Duration(j)*time.Second), 80+int32(j/2))
			s.Name = fmt.Sprintf("svc-%d", i)
			specs = append(specs, s)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if ims := resolve(specs); len(ims) != 1000 {
			b.Fatal(len(ims))
		}
	}
}
