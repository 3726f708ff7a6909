package observe

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/wire"
)

// testEnricher names clusters 1 (east) and 2 (west), two identities and
// one pod of east.
type testEnricher struct{}

func (testEnricher) Identity(id uint32) (wire.Labels, bool) {
	switch id {
	case 70001: // east's checkout
		return wire.NewLabels("k8s", map[string]string{"app": "checkout", wire.NamespaceLabel: "shop", wire.ClusterLabel: "east"}), true
	case 132000: // west's frontend
		return wire.NewLabels("k8s", map[string]string{"app": "frontend", wire.NamespaceLabel: "web", wire.ClusterLabel: "west"}), true
	case 200000: // cluster 3, which the enricher cannot name
		return wire.NewLabels("k8s", map[string]string{"app": "batch", wire.NamespaceLabel: "jobs", wire.ClusterLabel: "north"}), true
	case datapath.IdentityWorld:
		return wire.Labels{{Source: "reserved", Key: "world"}}, true
	}
	return nil, false
}

func (testEnricher) ClusterName(id uint16) string {
	return map[uint16]string{1: "east", 2: "west"}[id]
}

func (testEnricher) Pod(ip netip.Addr) (string, string, bool) {
	if ip == netip.MustParseAddr("10.1.1.11") {
		return "shop", "checkout-0", true
	}
	return "", "", false
}

// dpFlow is a datapath flow from src (identity sid, cluster sc) to dst.
func dpFlow(src string, sid uint32, sc uint16, dst string, did uint32, dc uint16, v flows.Verdict) flows.Flow {
	f := flows.Flow{
		Time: time.Date(2026, 11, 21, 3, 0, 0, 123e6, time.UTC), Verdict: v, Direction: datapath.Ingress,
		Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst), Protocol: datapath.TCP,
		SrcIdentity: sid, DstIdentity: did, SrcCluster: sc, DstCluster: dc, Bytes: 60,
	}
	if v == flows.VerdictDropped {
		f.DropReason = flows.DropPolicyDenied
	}
	return f
}

func TestFlowEnrich(t *testing.T) {
	f := dpFlow("10.2.1.5:41234", 132000, 2, "10.1.1.11:8080", 70001, 1, flows.VerdictDropped)
	got := Enrich(testEnricher{}, f)
	want := Flow{
		Time: f.Time, Verdict: "DROPPED", DropReason: "policy-denied", Direction: "ingress", Protocol: "TCP", Bytes: 60,
		Source: Endpoint{Cluster: "west", Namespace: "web", Identity: 132000, IP: "10.2.1.5", Port: 41234, Labels: []string{
			"k8s:app=frontend", "k8s:io.cilium.k8s.policy.cluster=west", "k8s:io.kubernetes.pod.namespace=web"}},
		Destination: Endpoint{Cluster: "east", Namespace: "shop", Pod: "checkout-0", Identity: 70001, IP: "10.1.1.11", Port: 8080,
			Labels: []string{"k8s:app=checkout", "k8s:io.cilium.k8s.policy.cluster=east", "k8s:io.kubernetes.pod.namespace=shop"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Enrich:\n got %+v\nwant %+v", got, want)
	}

	// JSON: stable snake_case names; no drop_reason when forwarded.
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"time":"2026-11-21T03:00:00.123Z"`, `"verdict":"DROPPED"`, `"drop_reason":"policy-denied"`,
		`"direction":"ingress"`, `"protocol":"TCP"`, `"is_reply":false`, `"source":{"cluster":"west","namespace":"web","identity":132000,"ip":"10.2.1.5","port":41234,"labels":[`,
		`"destination":{"cluster":"east","namespace":"shop","pod":"checkout-0"`, `"bytes":60`, `"sampled":false`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("JSON lacks %s: %s", k, b)
		}
	}
	fwd := Enrich(testEnricher{}, dpFlow("10.2.1.5:41234", 132000, 2, "10.1.1.11:8080", 70001, 1, flows.VerdictForwarded))
	if b, _ := json.Marshal(fwd); strings.Contains(string(b), "drop_reason") {
		t.Errorf("a forwarded flow has a drop reason: %s", b)
	}

	// An unnamed cluster: the identity's cluster label; else its id.
	// The world: no cluster, no namespace.
	f = dpFlow("10.3.0.7:5000", 200000, 3, "192.0.2.1:443", datapath.IdentityWorld, 0, flows.VerdictForwarded)
	f.Protocol = 1
	got = Enrich(testEnricher{}, f)
	if got.Source.Cluster != "north" || got.Source.Namespace != "jobs" || got.Destination.Cluster != "" ||
		got.Destination.Namespace != "" || got.Protocol != "ICMP" || got.Destination.Labels[0] != "reserved:world=" {
		t.Errorf("Enrich of north → world: %+v", got)
	}
	f.SrcIdentity = 999999
	if got := Enrich(testEnricher{}, f); got.Source.Cluster != "cluster-3" || got.Source.Labels != nil {
		t.Errorf("unknown identity of cluster 3: %+v", got.Source)
	}

	// No enricher: identities, addresses and cluster ids only.
	got = Enrich(nil, dpFlow("10.2.1.5:41234", 132000, 2, "10.1.1.11:8080", 70001, 1, flows.VerdictDropped))
	if got.Source.Cluster != "cluster-2" || got.Destination.Pod != "" || got.Destination.Identity != 70001 || got.Destination.Labels != nil {
		t.Errorf("Enrich(nil): %+v", got)
	}
}
