package flowmetrics

import (
	"strings"
	"sync"
	"testing"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Flows as the agent fills them: shop/frontend in east calling
// shop/payments in west.
func frontend() *flowpb.Endpoint {
	return &flowpb.Endpoint{ID: 12, Identity: 65537, ClusterName: "east", Namespace: "shop", PodName: "frontend-7d9f",
		Labels:    []string{"k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster=east"},
		Workloads: []*flowpb.Workload{{Name: "frontend", Kind: "Deployment"}}}
}

func payments() *flowpb.Endpoint {
	return &flowpb.Endpoint{ID: 40, Identity: 131073, ClusterName: "west", Namespace: "shop", PodName: "payments-0",
		Labels:    []string{"k8s:app.kubernetes.io/name=payments", "k8s:app=pay", "k8s:io.kubernetes.pod.namespace=shop"},
		Workloads: []*flowpb.Workload{{Name: "payments", Kind: "StatefulSet"}}}
}

func tcpFlow(verdict flowpb.Verdict, flags *flowpb.TCPFlags, reply bool) *flowpb.Flow {
	f := &flowpb.Flow{
		Verdict:          verdict,
		EventType:        &flowpb.CiliumEventType{Type: eventTrace, SubType: 5},
		IP:               &flowpb.IP{Source: "10.1.1.10", Destination: "10.2.1.100", IpVersion: flowpb.IPVersion_IPv4},
		L4:               &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 40000, DestinationPort: 8443, Flags: flags}}},
		Source:           frontend(),
		Destination:      payments(),
		TrafficDirection: flowpb.TrafficDirection_EGRESS,
		IsReply:          wrapperspb.Bool(reply),
	}
	if verdict == flowpb.Verdict_DROPPED {
		f.EventType = &flowpb.CiliumEventType{Type: eventDrop, SubType: 133}
		f.DropReasonDesc = flowpb.DropReason_POLICY_DENIED
	}
	return f
}

func icmpFlow(v6 bool, typ, code uint32) *flowpb.Flow {
	f := &flowpb.Flow{Verdict: flowpb.Verdict_FORWARDED, EventType: &flowpb.CiliumEventType{Type: eventTrace},
		IP:     &flowpb.IP{Source: "10.1.1.10", Destination: "10.2.1.100", IpVersion: flowpb.IPVersion_IPv4},
		L4:     &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv4{ICMPv4: &flowpb.ICMPv4{Type: typ, Code: code}}},
		Source: frontend(), Destination: payments(), IsReply: wrapperspb.Bool(false)}
	if v6 {
		f.IP = &flowpb.IP{Source: "fd00::1", Destination: "fd00::2", IpVersion: flowpb.IPVersion_IPv6}
		f.L4 = &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv6{ICMPv6: &flowpb.ICMPv6{Type: typ, Code: code}}}
	}
	return f
}

func newMetrics(t testing.TB, specs ...string) (*Metrics, *prometheus.Registry) {
	t.Helper()
	cfg, err := Parse(specs)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

func expect(t *testing.T, reg *prometheus.Registry, text string, names ...string) {
	t.Helper()
	if err := testutil.GatherAndCompare(reg, strings.NewReader(text), names...); err != nil {
		t.Error(err)
	}
}

func TestFlowsProcessed(t *testing.T) {
	m, reg := newMetrics(t, "flow:sourceContext=namespace;destinationContext=cluster")
	syn := &flowpb.TCPFlags{SYN: true}
	m.Observe(tcpFlow(flowpb.Verdict_FORWARDED, syn, false))
	m.Observe(tcpFlow(flowpb.Verdict_FORWARDED, syn, false))
	m.Observe(tcpFlow(flowpb.Verdict_DROPPED, syn, false))
	pv := tcpFlow(flowpb.Verdict_AUDIT, syn, false)
	pv.EventType = &flowpb.CiliumEventType{Type: eventPolicyVerdict}
	m.Observe(pv)
	sock := tcpFlow(flowpb.Verdict_TRANSLATED, nil, false)
	sock.EventType = &flowpb.CiliumEventType{Type: 7} // trace-sock: Hubble's metric calls it Unknown
	sock.Destination.ClusterName = ""
	m.Observe(sock)
	m.Observe(nil)
	expect(t, reg, `
# HELP hubble_flows_processed_total Total number of flows processed
# TYPE hubble_flows_processed_total counter
hubble_flows_processed_total{destination="west",protocol="TCP",source="shop",subtype="from-endpoint",type="Trace",verdict="FORWARDED"} 2
hubble_flows_processed_total{destination="west",protocol="TCP",source="shop",subtype="",type="Drop",verdict="DROPPED"} 1
hubble_flows_processed_total{destination="west",protocol="TCP",source="shop",subtype="",type="PolicyVerdict",verdict="AUDIT"} 1
hubble_flows_processed_total{destination="",protocol="Unknown flow",source="shop",subtype="7",type="Unknown",verdict="TRANSLATED"} 1
`)
}

func TestDrops(t *testing.T) {
	m, reg := newMetrics(t, "drop:sourceContext=pod;destinationContext=workload|identity;labelsContext=source_cluster,destination_cluster,traffic_direction")
	m.Observe(tcpFlow(flowpb.Verdict_DROPPED, &flowpb.TCPFlags{SYN: true}, false))
	m.Observe(tcpFlow(flowpb.Verdict_DROPPED, &flowpb.TCPFlags{SYN: true}, false))
	m.Observe(tcpFlow(flowpb.Verdict_FORWARDED, &flowpb.TCPFlags{SYN: true}, false)) // not a drop
	noWorkload := tcpFlow(flowpb.Verdict_DROPPED, nil, false)
	noWorkload.DropReasonDesc = flowpb.DropReason_CT_MAP_INSERTION_FAILED
	noWorkload.Destination.Workloads = nil // the next context, identity, names it
	noWorkload.TrafficDirection = flowpb.TrafficDirection_TRAFFIC_DIRECTION_UNKNOWN
	m.Observe(noWorkload)
	// Context labels first, then reason and protocol, as Hubble orders them.
	expect(t, reg, `
# HELP hubble_drop_total Number of drops
# TYPE hubble_drop_total counter
hubble_drop_total{destination="shop/payments",destination_cluster="west",protocol="TCP",reason="POLICY_DENIED",source="shop/frontend-7d9f",source_cluster="east",traffic_direction="egress"} 2
hubble_drop_total{destination="k8s:app.kubernetes.io/name=payments,k8s:app=pay,k8s:io.kubernetes.pod.namespace=shop",destination_cluster="west",protocol="TCP",reason="CT_MAP_INSERTION_FAILED",source="shop/frontend-7d9f",source_cluster="east",traffic_direction="unknown"} 1
`)
}

func TestTCPFlags(t *testing.T) {
	m, reg := newMetrics(t, "tcp:destinationContext=app;destinationEgressContext=pod-name")
	m.Observe(tcpFlow(flowpb.Verdict_FORWARDED, &flowpb.TCPFlags{SYN: true}, false))
	m.Observe(tcpFlow(flowpb.Verdict_FORWARDED, &flowpb.TCPFlags{SYN: true, ACK: true}, true))
	m.Observe(tcpFlow(flowpb.Verdict_FORWARDED, &flowpb.TCPFlags{FIN: true, RST: true, ACK: true}, false))
	m.Observe(tcpFlow(flowpb.Verdict_DROPPED, &flowpb.TCPFlags{SYN: true}, false)) // not forwarded
	m.Observe(tcpFlow(flowpb.Verdict_FORWARDED, nil, false))                       // no flags
	ingress := tcpFlow(flowpb.Verdict_REDIRECTED, &flowpb.TCPFlags{SYN: true}, false)
	ingress.TrafficDirection = flowpb.TrafficDirection_INGRESS // destinationContext: app
	m.Observe(ingress)
	expect(t, reg, `
# HELP hubble_tcp_flags_total TCP flag occurrences
# TYPE hubble_tcp_flags_total counter
hubble_tcp_flags_total{destination="payments-0",family="IPv4",flag="SYN"} 1
hubble_tcp_flags_total{destination="payments-0",family="IPv4",flag="SYN-ACK"} 1
hubble_tcp_flags_total{destination="payments-0",family="IPv4",flag="FIN"} 1
hubble_tcp_flags_total{destination="payments-0",family="IPv4",flag="RST"} 1
hubble_tcp_flags_total{destination="payments",family="IPv4",flag="SYN"} 1
`)
}

func TestPortDistribution(t *testing.T) {
	m, reg := newMetrics(t, "port-distribution:labelsContext=destination_workload,destination_workload_kind")
	m.Observe(tcpFlow(flowpb.Verdict_FORWARDED, &flowpb.TCPFlags{SYN: true}, false))
	m.Observe(tcpFlow(flowpb.Verdict_FORWARDED, &flowpb.TCPFlags{ACK: true}, true)) // a reply: its port is the client's
	unknown := tcpFlow(flowpb.Verdict_FORWARDED, &flowpb.TCPFlags{ACK: true}, false)
	unknown.IsReply = nil // not known to be a request either
	m.Observe(unknown)
	udp := tcpFlow(flowpb.Verdict_FORWARDED, nil, false)
	udp.L4 = &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: 5353, DestinationPort: 53}}}
	m.Observe(udp)
	m.Observe(icmpFlow(false, 8, 0))
	expect(t, reg, `
# HELP hubble_port_distribution_total Numbers of packets distributed by destination port
# TYPE hubble_port_distribution_total counter
hubble_port_distribution_total{destination_workload="payments",destination_workload_kind="StatefulSet",port="8443",protocol="TCP"} 1
hubble_port_distribution_total{destination_workload="payments",destination_workload_kind="StatefulSet",port="53",protocol="UDP"} 1
hubble_port_distribution_total{destination_workload="payments",destination_workload_kind="StatefulSet",port="0",protocol="ICMPv4"} 1
`)
}

func TestICMP(t *testing.T) {
	m, reg := newMetrics(t, "icmp:sourceContext=reserved-identity|ip")
	m.Observe(icmpFlow(false, 8, 0))
	m.Observe(icmpFlow(false, 3, 3))
	m.Observe(icmpFlow(false, 8, 3))
	m.Observe(icmpFlow(false, 200, 1))
	m.Observe(icmpFlow(true, 128, 0))
	world := icmpFlow(true, 1, 4)
	world.Source = &flowpb.Endpoint{Identity: 2, Labels: []string{"reserved:world", "reserved:kube-apiserver"}}
	m.Observe(world)
	expect(t, reg, `
# HELP hubble_icmp_total Number of ICMP messages
# TYPE hubble_icmp_total counter
hubble_icmp_total{family="IPv4",source="10.1.1.10",type="EchoRequest"} 1
hubble_icmp_total{family="IPv4",source="10.1.1.10",type="DestinationUnreachable(Port)"} 1
hubble_icmp_total{family="IPv4",source="10.1.1.10",type="EchoRequest(Code: 3)"} 1
hubble_icmp_total{family="IPv4",source="10.1.1.10",type="200(1)"} 1
hubble_icmp_total{family="IPv6",source="fd00::1",type="EchoRequest"} 1
hubble_icmp_total{family="IPv6",source="reserved:kube-apiserver",type="DestinationUnreachable(PortUnreachable)"} 1
`)
}

// A value that is not UTF-8 is repaired, not refused; DNS names and several
// metrics on one registry.
func TestLabelValues(t *testing.T) {
	m, reg := newMetrics(t, "flow:destinationContext=dns;labelsContext=source_pod", "drop")
	f := tcpFlow(flowpb.Verdict_FORWARDED, &flowpb.TCPFlags{SYN: true}, false)
	f.DestinationNames = []string{"payments.shop.svc", "pay.example.com"}
	f.Source.PodName = "bad\xffname"
	m.Observe(f)
	expect(t, reg, `
# HELP hubble_flows_processed_total Total number of flows processed
# TYPE hubble_flows_processed_total counter
hubble_flows_processed_total{destination="payments.shop.svc,pay.example.com",protocol="TCP",source_pod="bad�name",subtype="from-endpoint",type="Trace",verdict="FORWARDED"} 1
`, "hubble_flows_processed_total")
	if n := testutil.CollectAndCount(reg, "hubble_drop_total"); n != 0 {
		t.Errorf("hubble_drop_total has %d series after a forwarded flow, want 0", n)
	}
	if m.LabelErrors() != 0 {
		t.Errorf("LabelErrors = %d", m.LabelErrors())
	}
}

// DeletePod removes the series of a deleted pod, in the metrics and
// contexts that name it, and a later flow of a pod of that name counts anew.
func TestDeletePod(t *testing.T) {
	m, reg := newMetrics(t, "flow:sourceContext=pod", "drop:labelsContext=destination_namespace,destination_pod",
		"tcp:sourceContext=pod-name")
	syn := &flowpb.TCPFlags{SYN: true}
	m.Observe(tcpFlow(flowpb.Verdict_DROPPED, syn, false))
	other := tcpFlow(flowpb.Verdict_DROPPED, syn, false)
	other.Source.PodName, other.Destination.PodName = "frontend-other", "payments-1"
	m.Observe(other)
	m.Observe(tcpFlow(flowpb.Verdict_FORWARDED, syn, false))

	m.DeletePod("shop", "frontend-7d9f") // the source of the first flows
	m.DeletePod("shop", "payments-1")    // the destination of the other
	expect(t, reg, `
# HELP hubble_flows_processed_total Total number of flows processed
# TYPE hubble_flows_processed_total counter
hubble_flows_processed_total{protocol="TCP",source="shop/frontend-other",subtype="",type="Drop",verdict="DROPPED"} 1
# HELP hubble_drop_total Number of drops
# TYPE hubble_drop_total counter
hubble_drop_total{destination_namespace="shop",destination_pod="payments-0",protocol="TCP",reason="POLICY_DENIED"} 1
# HELP hubble_tcp_flags_total TCP flag occurrences
# TYPE hubble_tcp_flags_total counter
hubble_tcp_flags_total{family="IPv4",flag="SYN",source="frontend-7d9f"} 1
`)
	m.Observe(tcpFlow(flowpb.Verdict_FORWARDED, syn, false))
	got := testutil.ToFloat64(m.handlers[0].main.vec.(*prometheus.CounterVec).WithLabelValues("TCP", "Trace", "from-endpoint", "FORWARDED", "shop/frontend-7d9f"))
	if got != 1 {
		t.Errorf("a flow of a deleted pod's name after DeletePod: counted %v, want 1 in a new series", got)
	}
}

func TestRegisterTwice(t *testing.T) {
	cfg, err := Parse([]string{"drop"})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if _, err := New(cfg, reg); err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg, reg); err == nil || !strings.Contains(err.Error(), "registering hubble_drop_total") {
		t.Fatalf("registering twice: %v", err)
	}
}

// Observe from several goroutines (the agent's readers) counts every flow.
func TestObserveConcurrent(t *testing.T) {
	m, reg := newMetrics(t, "flow:sourceContext=pod", "tcp:destinationContext=pod")
	const workers, each = 4, 2000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				f := tcpFlow(flowpb.Verdict_FORWARDED, &flowpb.TCPFlags{SYN: true}, false)
				f.Source.PodName = []string{"a", "b", "c"}[(w+i)%3]
				m.Observe(f)
			}
		})
	}
	wg.Wait()
	total := 0.0
	for _, p := range []string{"a", "b", "c"} {
		total += testutil.ToFloat64(m.handlers[0].main.vec.(*prometheus.CounterVec).WithLabelValues("TCP", "Trace", "from-endpoint", "FORWARDED", "shop/"+p))
	}
	if total != workers*each {
		t.Errorf("counted %v flows, want %d", total, workers*each)
	}
	if n := testutil.CollectAndCount(reg, "hubble_tcp_flags_total"); n != 1 {
		t.Errorf("hubble_tcp_flags_total has %d series, want 1", n)
	}
}

// BenchmarkObserve is the cost per flow of all five metrics with contexts,
// one flow in ten a drop, label sets already known: on the agent's reading
// goroutine (Serial) and from several at once (Parallel).
func BenchmarkObserve(b *testing.B) {
	m, _ := newMetrics(b, "flow:sourceContext=namespace;destinationContext=namespace",
		"drop:sourceContext=pod;destinationContext=pod;labelsContext=source_cluster,destination_cluster",
		"tcp", "port-distribution", "icmp")
	flows := make([]*flowpb.Flow, 10)
	for i := range flows {
		flows[i] = tcpFlow(flowpb.Verdict_FORWARDED, &flowpb.TCPFlags{SYN: true}, false)
	}
	flows[0] = tcpFlow(flowpb.Verdict_DROPPED, &flowpb.TCPFlags{SYN: true}, false)
	b.Run("Serial", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			m.Observe(flows[i%len(flows)])
		}
	})
	b.Run("Parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				m.Observe(flows[i%len(flows)])
			}
		})
	})
}
