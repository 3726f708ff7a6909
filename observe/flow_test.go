package observe

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

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

func (testEnricher) Pod(ip netip.Addr, _ uint16) (Pod, bool) {
	switch ip {
	case netip.MustParseAddr("10.1.1.11"):
		return Pod{Cluster: "east", Namespace: "shop", Name: "checkout-0"}, true
	case netip.MustParseAddr("10.2.1.5"): // a remote pod, named from west's ipcache entry
		return Pod{Cluster: "west", Namespace: "web", Name: "frontend-1", Workload: Workload{Kind: "Deployment", Name: "frontend"}}, true
	}
	return Pod{}, false
}

func (testEnricher) Service(fe netip.AddrPort) (string, string, bool) {
	if fe == netip.MustParseAddrPort("10.96.0.10:80") {
		return "shop", "checkout", true
	}
	return "", "", false
}

// dpFlow is a datapath flow from src (identity sid, cluster sc) to dst.
func dpFlow(src string, sid uint32, sc uint16, dst string, did uint32, dc uint16, v flows.Verdict) flows.Flow {
	f := flows.Flow{
		Time: time.Date(2026, 11, 21, 3, 0, 0, 123e6, time.UTC), Verdict: v, Direction: datapath.Ingress,
		Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst), Protocol: datapath.TCP,
		SrcIdentity: sid, DstIdentity: did, SrcCluster: sc, DstCluster: dc, Bytes: 60, TCPFlags: flows.TCPFlagSYN,
	}
	if v == flows.VerdictDropped {
		f.DropReason = flows.DropPolicyDenied
	}
	return f
}

func enrich(e Enricher, f flows.Flow) *flowpb.Flow { return newEnricher(e, "east/node-1", 0).flow(f) }

func TestFlowEnrich(t *testing.T) {
	f := dpFlow("10.2.1.5:41234", 132000, 2, "10.1.1.11:8080", 70001, 1, flows.VerdictDropped)
	got := enrich(testEnricher{}, f)
	want := &flowpb.Flow{
		Time: timestamppb.New(f.Time), Verdict: flowpb.Verdict_DROPPED, DropReasonDesc: flowpb.DropReason_POLICY_DENIED,
		Type: flowpb.FlowType_L3_L4, NodeName: "east/node-1", TrafficDirection: flowpb.TrafficDirection_INGRESS,
		IP: &flowpb.IP{Source: "10.2.1.5", Destination: "10.1.1.11", IpVersion: flowpb.IPVersion_IPv4},
		L4: &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 41234, DestinationPort: 8080, Flags: &flowpb.TCPFlags{SYN: true}}}},
		Source: &flowpb.Endpoint{ClusterName: "west", Namespace: "web", PodName: "frontend-1", Identity: 132000,
			Workloads: []*flowpb.Workload{{Kind: "Deployment", Name: "frontend"}},
			Labels:    []string{"k8s:app=frontend", "k8s:io.cilium.k8s.policy.cluster=west", "k8s:io.kubernetes.pod.namespace=web"}},
		Destination: &flowpb.Endpoint{ClusterName: "east", Namespace: "shop", PodName: "checkout-0", Identity: 70001,
			Labels: []string{"k8s:app=checkout", "k8s:io.cilium.k8s.policy.cluster=east", "k8s:io.kubernetes.pod.namespace=shop"}},
		EventType: &flowpb.CiliumEventType{Type: 1, SubType: 133}, IsReply: wrapperspb.Bool(false),
		TraceObservationPoint: flowpb.TraceObservationPoint_TO_ENDPOINT, Interface: &flowpb.NetworkInterface{},
	}
	setDropReason(want) // the deprecated fields Hubble still fills
	setSummary(want)
	if !proto.Equal(got, want) {
		t.Fatalf("enrich:\n got %v\nwant %v", got, want)
	}

	// Hubble's JSON names, so operators' jq recipes work unchanged.
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"verdict":"DROPPED"`, `"drop_reason_desc":"POLICY_DENIED"`, `"pod_name":"frontend-1"`,
		`"TCP":{"source_port":41234,"destination_port":8080,"flags":{"SYN":true}}`, `"IP":{"source":"10.2.1.5"`, `"node_name":"east/node-1"`,
		`"Type":"L3_L4"`, `"traffic_direction":"INGRESS"`, `"drop_reason":133`, `"Summary":"TCPFlags:SYN"`, `"cluster_name":"west"`, `"is_reply":false`} {
		if !strings.Contains(strings.ReplaceAll(string(b), " ", ""), k) {
			t.Errorf("JSON lacks %s: %s", k, b)
		}
	}
	fwd := enrich(testEnricher{}, dpFlow("10.2.1.5:41234", 132000, 2, "10.1.1.11:8080", 70001, 1, flows.VerdictForwarded))
	if fwd.GetDropReasonDesc() != 0 || fwd.GetEventType().GetType() != 4 || fwd.GetVerdict() != flowpb.Verdict_FORWARDED {
		t.Errorf("a forwarded flow: %v", fwd)
	}

	// An unnamed cluster: the identity's cluster label; else its id.
	// The world: no cluster, no namespace, its reserved label.
	f = dpFlow("10.3.0.7:5000", 200000, 3, "192.0.2.1:443", datapath.IdentityWorld, 0, flows.VerdictForwarded)
	f.Protocol, f.Direction = 1, datapath.Egress
	got = enrich(testEnricher{}, f)
	if got.Source.ClusterName != "north" || got.Source.Namespace != "jobs" || got.Destination.ClusterName != "" ||
		got.Destination.Namespace != "" || got.GetL4().GetICMPv4() == nil || got.Destination.Labels[0] != "reserved:world" ||
		got.TraceObservationPoint != flowpb.TraceObservationPoint_FROM_ENDPOINT {
		t.Errorf("enrich of north → world: %v", got)
	}
	f.SrcIdentity = 999999
	if got := enrich(testEnricher{}, f); got.Source.ClusterName != "cluster-3" || got.Source.Labels != nil {
		t.Errorf("unknown identity of cluster 3: %v", got.Source)
	}

	// No enricher: identities, addresses and cluster ids only.
	got = enrich(nil, dpFlow("10.2.1.5:41234", 132000, 2, "10.1.1.11:8080", 70001, 1, flows.VerdictDropped))
	if got.Source.ClusterName != "" || got.Destination.PodName != "" || got.Destination.Identity != 70001 || got.Destination.Labels != nil {
		t.Errorf("enrich(nil): %v", got)
	}
}

func TestCompact(t *testing.T) {
	f := dpFlow("10.2.1.5:41234", 132000, 2, "10.1.1.11:8080", 70001, 1, flows.VerdictDropped)
	got := Compact(enrich(testEnricher{}, f))
	want := f.Time.Local().Format(time.StampMilli) + ": west/web/frontend-1:41234 (ID:132000) -> east/shop/checkout-0:8080 (ID:70001) Policy denied DROPPED (TCP Flags: SYN)"
	if got != want {
		t.Errorf("Compact:\n got %s\nwant %s", got, want)
	}
	f = dpFlow("10.1.1.11:8080", 70001, 1, "192.0.2.1:443", datapath.IdentityWorld, 0, flows.VerdictForwarded)
	f.Reply, f.Direction = true, datapath.Egress
	got = Compact(enrich(testEnricher{}, f))
	if !strings.HasSuffix(got, ": 192.0.2.1:443 (world) <- east/shop/checkout-0:8080 (ID:70001) from-endpoint FORWARDED (TCP Flags: SYN)") {
		t.Errorf("Compact of a reply: %s", got)
	}
}

// Policy verdicts, audits and the socket load balancer's translations in
// Hubble's terms.
func TestFlowKinds(t *testing.T) {
	f := dpFlow("10.2.1.5:41234", 132000, 2, "10.1.1.11:8080", 70001, 1, flows.VerdictForwarded)
	f.Kind, f.MatchType, f.New = flows.KindPolicyVerdict, flows.MatchL3L4, true
	got := enrich(testEnricher{}, f)
	if got.GetEventType().GetType() != 5 || got.GetPolicyMatchType() != 2 || got.GetVerdict() != flowpb.Verdict_FORWARDED ||
		got.GetType() != flowpb.FlowType_L3_L4 {
		t.Errorf("policy verdict: %v", got)
	}
	if c := Compact(got); !strings.Contains(c, " policy-verdict:L3-L4 INGRESS ALLOWED FORWARDED (TCP Flags: SYN)") {
		t.Errorf("compact policy verdict: %s", c)
	}

	f.Verdict, f.MatchType = flows.VerdictAudit, flows.MatchNone
	got = enrich(testEnricher{}, f)
	if got.GetVerdict() != flowpb.Verdict_AUDIT || !strings.Contains(Compact(got), "policy-verdict:none INGRESS AUDITED AUDIT") {
		t.Errorf("audit: %v / %s", got, Compact(got))
	}

	st := flows.Flow{Time: f.Time, Kind: flows.KindSockTranslate, Verdict: flows.VerdictTranslated, Direction: datapath.Egress,
		Dst: netip.MustParseAddrPort("10.1.1.11:8080"), DstCluster: 1, Service: netip.MustParseAddrPort("10.96.0.10:80"),
		Protocol: datapath.TCP, XlatePoint: flows.XlatePostForward, SocketCookie: 77, CgroupID: 9}
	got = enrich(testEnricher{}, st)
	if got.GetType() != flowpb.FlowType_SOCK || got.GetVerdict() != flowpb.Verdict_TRANSLATED || got.GetEventType().GetType() != 7 ||
		got.GetDestinationService().GetName() != "checkout" || got.GetDestinationService().GetNamespace() != "shop" ||
		got.GetDestination().GetPodName() != "checkout-0" || got.GetSockXlatePoint() != flowpb.SocketTranslationPoint_SOCK_XLATE_POINT_POST_DIRECTION_FWD ||
		got.GetSocketCookie() != 77 || got.GetCgroupId() != 9 || got.GetIsReply() != nil {
		t.Errorf("socket translation: %v", got)
	}
	if c := Compact(got); !strings.Contains(c, ": - -> east/shop/checkout-0:8080 post-direction-fwd TRANSLATED (TCP)") || got.GetIP().GetSource() != "" {
		t.Errorf("compact translation: %s", c)
	}
}
