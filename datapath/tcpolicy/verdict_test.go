package tcpolicy

import (
	"fmt"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/datapath/internal/dptest"
)

// Tests of what the programs report beyond drops and samples: policy
// verdicts with their match type, audit mode, TCP flags (BPF_PROG_TEST_RUN
// on crafted packets, as prog_test.go).

// verdictEnv is a progEnv reporting policy verdicts, and no trace event.
func verdictEnv(t *testing.T) *progEnv {
	e := newProgEnv(t)
	dptest.NoErr(t, e.m.SetFlowConfig(flows.Config{ClusterID: 1, PolicyVerdicts: true}))
	return e
}

// drain reads every pending event.
func (e *progEnv) drain(t testing.TB) []flows.Flow {
	t.Helper()
	var out []flows.Flow
	for e.fr.Pending() > 0 {
		out = append(out, e.flow(t))
	}
	return out
}

// TestPolicyVerdictMatchTypes: the first packet of a connection allowed by
// each kind of policy entry yields exactly one policy-verdict event, with
// Cilium's match type of that entry; the connection's next packets none.
func TestPolicyVerdictMatchTypes(t *testing.T) {
	for i, c := range []struct {
		key   Key
		proto datapath.Protocol
		match flows.MatchType
	}{
		{allow(progPeerA, datapath.Egress, AnyProtocol, 0, 0), datapath.UDP, flows.MatchL3Only},
		{allow(progPeerA, datapath.Egress, datapath.TCP, 0, 0), datapath.TCP, flows.MatchL3Proto},
		{allow(progPeerA, datapath.Egress, datapath.TCP, 8080, 0), datapath.TCP, flows.MatchL3L4},
		{allow(progPeerA, datapath.Egress, datapath.TCP, 8000, 8100), datapath.TCP, flows.MatchL3L4},
		{allow(AnyPeer, datapath.Egress, AnyProtocol, 0, 0), datapath.UDP, flows.MatchAll},
		{allow(AnyPeer, datapath.Egress, datapath.UDP, 0, 0), datapath.UDP, flows.MatchProtoOnly},
		{allow(AnyPeer, datapath.Egress, AnyProtocol, 8080, 0), datapath.SCTP, flows.MatchL4Only},
	} {
		t.Run(fmt.Sprintf("%d-%s", i, c.match), func(t *testing.T) {
			e := verdictEnv(t)
			dptest.NoErr(t, e.m.UpsertPolicy(c.key))
			pkt := testPacket(ap(progEPAddr4+":40000"), ap("10.2.0.5:8080"), c.proto, 0x02)
			for range 3 {
				e.want(t, datapath.Egress, pkt, tcActUnspec, "allowed")
			}
			evs := e.drain(t)
			want := flows.Flow{
				Kind: flows.KindPolicyVerdict, Verdict: flows.VerdictForwarded, MatchType: c.match,
				Direction: datapath.Egress, Ifindex: 1, Src: ap(progEPAddr4 + ":40000"), Dst: ap("10.2.0.5:8080"),
				Protocol: c.proto, SrcIdentity: progEP, DstIdentity: progPeerA, SrcCluster: 1, DstCluster: 2,
				Bytes: uint32(len(pkt)), New: true,
			}
			if c.proto == datapath.TCP {
				want.TCPFlags = flows.TCPFlagSYN
			}
			if len(evs) != 1 {
				t.Fatalf("%d events, want one policy verdict: %+v", len(evs), evs)
			}
			evs[0].Time = time.Time{}
			if evs[0] != want {
				t.Fatalf("policy verdict\n got  %+v\n want %+v", evs[0], want)
			}
		})
	}
}

// TestPolicyVerdictDenied: a denied packet is a policy verdict DROPPED
// (match none) followed by its drop event, every time; replies and
// unenforced directions make no verdict; without Config.PolicyVerdicts
// only the drop is reported.
func TestPolicyVerdictDenied(t *testing.T) {
	e := verdictEnv(t)
	denied := egress4("10.2.0.5:81", datapath.TCP)
	for range 2 {
		e.want(t, datapath.Egress, denied, tcActShot, "denied")
		evs := e.drain(t)
		if len(evs) != 2 || evs[0].Kind != flows.KindPolicyVerdict || evs[1].Kind != flows.KindDrop {
			t.Fatalf("events %+v, want a policy verdict then a drop", evs)
		}
		for _, f := range evs {
			if f.Verdict != flows.VerdictDropped || f.DropReason != flows.DropPolicyDenied || f.MatchType != flows.MatchNone || f.Dst != ap("10.2.0.5:81") {
				t.Fatalf("denied event %+v", f)
			}
		}
	}

	// Ingress allowed; egress not enforced: one verdict (ingress), none
	// for the reply nor for the unenforced direction's new flow.
	dptest.NoErr(t, e.m.UpsertPolicy(allow(progPeerA, datapath.Ingress, datapath.TCP, 80, 0)))
	setTestEndpoint(t, e.m, 1, progEP, true, false)
	e.want(t, datapath.Ingress, ingress4("10.2.0.5:5000", 80, datapath.TCP), tcActUnspec, "ingress allowed")
	e.want(t, datapath.Egress, testPacket(ap(progEPAddr4+":80"), ap("10.2.0.5:5000"), datapath.TCP, 0x12), tcActUnspec, "reply")
	e.want(t, datapath.Egress, egress4("10.3.0.9:443", datapath.TCP), tcActUnspec, "egress not enforced")
	if evs := e.drain(t); len(evs) != 1 || evs[0].Direction != datapath.Ingress || evs[0].MatchType != flows.MatchL3L4 {
		t.Fatalf("events %+v, want the ingress verdict alone", evs)
	}

	dptest.NoErr(t, e.m.SetFlowConfig(flows.Config{ClusterID: 1}))
	e.want(t, datapath.Ingress, ingress4("10.2.0.5:5000", 81, datapath.TCP), tcActShot, "denied, verdicts off")
	if evs := e.drain(t); len(evs) != 1 || evs[0].Kind != flows.KindDrop {
		t.Fatalf("events %+v, want the drop alone", evs)
	}
}

// TestPolicyVerdictWithTraces: with trace events too (the demo's
// configuration), a new connection reports its verdict, then its trace;
// established packets their traces only.
func TestPolicyVerdictWithTraces(t *testing.T) {
	e := newProgEnv(t)
	dptest.NoErr(t, e.m.SetFlowConfig(flows.Config{ClusterID: 1, PolicyVerdicts: true, TraceNew: true, SampleRate: 1}))
	if fc, err := e.m.FlowConfig(); err != nil || !fc.PolicyVerdicts {
		t.Fatalf("FlowConfig() = %+v, %v", fc, err)
	}
	dptest.NoErr(t, e.m.UpsertPolicy(allow(progPeerA, datapath.Egress, datapath.TCP, 80, 0)))
	e.want(t, datapath.Egress, egress4("10.2.0.5:80", datapath.TCP), tcActUnspec, "SYN")
	e.want(t, datapath.Egress, testPacket(ap(progEPAddr4+":40000"), ap("10.2.0.5:80"), datapath.TCP, 0x10), tcActUnspec, "ACK")
	var kinds []flows.Kind
	for _, f := range e.drain(t) {
		kinds = append(kinds, f.Kind)
	}
	if fmt.Sprint(kinds) != "[policy-verdict trace trace]" {
		t.Fatalf("event kinds %v, want policy-verdict trace trace", kinds)
	}
}

// TestPolicyAudit: an endpoint in audit mode passes what the policy denies
// and reports it AUDIT, in its policy verdict and its trace events (the
// connection's later packets too, while the cached verdict holds); what
// the policy allows stays FORWARDED; out of audit mode the same flow is
// dropped.
func TestPolicyAudit(t *testing.T) {
	e := newProgEnv(t)
	dptest.NoErr(t, e.m.SetFlowConfig(flows.Config{ClusterID: 1, PolicyVerdicts: true, SampleRate: 1}))
	dptest.NoErr(t, e.m.UpsertPolicy(allow(progPeerA, datapath.Egress, datapath.TCP, 80, 0)))
	recordTestEndpoint(t, e.m, 1, Endpoint{Identity: progEP, EnforceIngress: true, EnforceEgress: true, Audit: true})

	denied := egress4("10.2.0.5:81", datapath.TCP)
	e.want(t, datapath.Egress, denied, tcActUnspec, "denied, audited")
	e.want(t, datapath.Egress, denied, tcActUnspec, "denied, audited, established")
	evs := e.drain(t)
	if len(evs) != 3 || evs[0].Kind != flows.KindPolicyVerdict || evs[1].Kind != flows.KindTrace || evs[2].Kind != flows.KindTrace {
		t.Fatalf("events %+v, want a policy verdict and two traces", evs)
	}
	for _, f := range evs {
		if f.Verdict != flows.VerdictAudit || f.DropReason != flows.DropNone || f.MatchType != flows.MatchNone {
			t.Fatalf("audited event %+v", f)
		}
	}
	// A reply of the audited flow is forwarded.
	e.want(t, datapath.Ingress, testPacket(ap("10.2.0.5:81"), ap(progEPAddr4+":40000"), datapath.TCP, 0x12), tcActUnspec, "reply")
	if evs := e.drain(t); len(evs) != 1 || evs[0].Verdict != flows.VerdictForwarded || !evs[0].Reply {
		t.Fatalf("reply events %+v", evs)
	}
	// Allowed by the policy: forwarded, with its match type.
	e.want(t, datapath.Egress, egress4("10.2.0.5:80", datapath.TCP), tcActUnspec, "allowed")
	if evs := e.drain(t); len(evs) != 2 || evs[0].Verdict != flows.VerdictForwarded || evs[0].MatchType != flows.MatchL3L4 {
		t.Fatalf("allowed events %+v", evs)
	}
	c, err := e.m.Counters()
	dptest.NoErr(t, err)
	if c.Audited != [2]uint64{0, 1} || c.Dropped() != 0 {
		t.Fatalf("counters %+v, want one audited egress decision and no drop", c)
	}

	// Out of audit mode (the endpoint changed: cached verdicts are
	// checked again), the audited flow is cut.
	recordTestEndpoint(t, e.m, 1, Endpoint{Identity: progEP, EnforceIngress: true, EnforceEgress: true})
	dptest.NoErr(t, e.m.RecheckFlows())
	e.want(t, datapath.Egress, denied, tcActShot, "denied, not audited")
	if evs := e.drain(t); len(evs) != 2 || evs[1].Kind != flows.KindDrop {
		t.Fatalf("events %+v, want a verdict and a drop", evs)
	}
}

// TestPolicyTCPFlags: every event of a TCP packet carries its flags.
func TestPolicyTCPFlags(t *testing.T) {
	e := newProgEnv(t)
	dptest.NoErr(t, e.m.SetFlowConfig(flows.Config{ClusterID: 1, SampleRate: 1}))
	dptest.NoErr(t, e.m.UpsertPolicy(allow(progPeerA, datapath.Egress, datapath.TCP, 80, 0)))
	for _, fl := range []flows.TCPFlags{
		flows.TCPFlagSYN, flows.TCPFlagSYN | flows.TCPFlagACK, flows.TCPFlagACK | flows.TCPFlagPSH,
		flows.TCPFlagFIN | flows.TCPFlagACK, flows.TCPFlagRST, flows.TCPFlagURG | flows.TCPFlagACK,
		flows.TCPFlagSYN | flows.TCPFlagECE | flows.TCPFlagCWR, 0xff,
	} {
		e.want(t, datapath.Egress, testPacket(ap(progEPAddr4+":40000"), ap("10.2.0.5:80"), datapath.TCP, uint8(fl)), tcActUnspec, "allowed")
		if f := e.flow(t); f.TCPFlags != fl {
			t.Fatalf("flags %q, want %q", f.TCPFlags, fl)
		}
	}
	// IPv6, and a denied packet.
	e.want(t, datapath.Egress, testPacket(ap("[fd00:1::1]:40000"), ap("[fd00:2::5]:81"), datapath.TCP, 0x12), tcActShot, "IPv6 denied")
	if f := e.flow(t); f.Kind != flows.KindDrop || !f.TCPFlags.SYN() || !f.TCPFlags.ACK() || f.TCPFlags.FIN() {
		t.Fatalf("IPv6 drop %+v", f)
	}
	// Other protocols have none.
	e.want(t, datapath.Egress, egress4("10.2.0.5:80", datapath.UDP), tcActShot, "UDP")
	if f := e.flow(t); f.TCPFlags != 0 {
		t.Fatalf("UDP flags %q", f.TCPFlags)
	}
}

// TestPolicyValuesMigrated: entries a previous version wrote without their
// match type get it when the programs' maps are opened again.
func TestPolicyValuesMigrated(t *testing.T) {
	mesh, m := openTest(t, Config{})
	k := allow(AnyPeer, datapath.Ingress, datapath.UDP, 0, 0)
	dptest.NoErr(t, m.UpsertPolicy(k))
	e := k.entries(nil)[0]
	old := policyValue{}
	dptest.NoErr(t, m.policy.Put(&e, &old))
	dptest.NoErr(t, m.Close())
	m2 := openPrograms(t, mesh, Config{})
	var v policyValue
	dptest.NoErr(t, m2.policy.Lookup(&e, &v))
	if flows.MatchType(v.MatchType) != flows.MatchProtoOnly {
		t.Fatalf("match type %v after reopening, want %v", flows.MatchType(v.MatchType), flows.MatchProtoOnly)
	}
}
