package statesource

import (
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/wire"
)

func TestExportSpec(t *testing.T) {
	created := time.Date(2026, 12, 5, 14, 0, 0, 500, time.UTC)
	s := Service{Namespace: "shop", Name: "checkout", ClusterIP: netip.MustParseAddr("10.0.0.7"),
		Ports: []ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}}
	if s.ExportSpec("west") != nil || s.Global() {
		t.Fatal("a service without export has a spec or is global")
	}
	s.Export = &Export{Created: created, SessionAffinity: wire.SessionAffinityClientIP, AffinityTimeout: 30}
	if !s.Global() {
		t.Fatal("an exported service is not global")
	}
	spec := s.ExportSpec("west")
	v, err := wire.EncodeServiceExport(spec)
	if err != nil {
		t.Fatal(err)
	}
	got, err := wire.DecodeServiceExport(wire.Cluster{Name: "west", ID: 2}, spec.Key(), v)
	if err != nil {
		t.Fatal(err)
	}
	if got.Type != wire.ImportClusterSetIP || got.PortsKey() != "TCP/80/http/" || got.SessionAffinity != "ClientIP" ||
		*got.SessionAffinityConfig.ClientIP.TimeoutSeconds != 30 || !got.ExportCreationTimestamp.Equal(created.Truncate(time.Second)) {
		t.Fatalf("spec %+v", got)
	}
	s.ClusterIP = netip.Addr{}
	if s.ExportSpec("west").Type != wire.ImportHeadless {
		t.Fatal("a service without cluster IP is not exported headless")
	}
}
