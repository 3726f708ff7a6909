package flows

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/datapath"
)

func TestDecodeShort(t *testing.T) {
	if _, ok := decode(make([]byte, eventSize-1), nil); ok {
		t.Fatal("decoded a short event")
	}
}

// TestDecode: every field of struct cm_flow_event lands where layout.go
// says (the programs' tests compare whole events read from the kernel); an
// event without a kind (a previous version's program) is a drop or a trace
// by its verdict.
func TestDecode(t *testing.T) {
	b := make([]byte, eventSize)
	ne := binary.NativeEndian
	ne.PutUint64(b[0:], 1234)
	copy(b[8:], []byte{10, 2, 0, 5})
	copy(b[24:], []byte{10, 1, 0, 1})
	ne.PutUint32(b[40:], 0x20005)
	ne.PutUint32(b[44:], 0x10001)
	ne.PutUint32(b[48:], 7)
	ne.PutUint32(b[52:], 60)
	ne.PutUint32(b[56:], 100)
	binary.BigEndian.PutUint16(b[60:], 40000)
	binary.BigEndian.PutUint16(b[62:], 8080)
	ne.PutUint16(b[64:], 2)
	ne.PutUint16(b[66:], 1)
	b[68], b[69], b[70], b[71], b[72], b[73] = 4, uint8(datapath.TCP), uint8(VerdictDropped), uint8(DropPolicyDenied), uint8(datapath.Ingress), flowNew|flowFragment
	at := time.Unix(1, 0)
	f, ok := decode(b, func(mono uint64) time.Time { return at.Add(time.Duration(mono)) })
	want := Flow{
		Time: at.Add(1234), Kind: KindDrop, Verdict: VerdictDropped, DropReason: DropPolicyDenied, Direction: datapath.Ingress, Ifindex: 7,
		Src: netip.MustParseAddrPort("10.2.0.5:40000"), Dst: netip.MustParseAddrPort("10.1.0.1:8080"), Protocol: datapath.TCP,
		SrcIdentity: 0x20005, DstIdentity: 0x10001, SrcCluster: 2, DstCluster: 1, Bytes: 60, SampleRate: 100,
		New: true, Fragment: true,
	}
	if !ok || f != want {
		t.Fatalf("decoded %+v, %v\nwant %+v", f, ok, want)
	}
}

func TestStrings(t *testing.T) {
	for got, want := range map[string]string{
		VerdictForwarded.String(): "FORWARDED", VerdictDropped.String(): "DROPPED", Verdict(9).String(): "verdict(9)",
		VerdictAudit.String(): "AUDIT", VerdictTranslated.String(): "TRANSLATED",
		KindDrop.String(): "drop", KindTrace.String(): "trace", KindPolicyVerdict.String(): "policy-verdict",
		KindSockTranslate.String(): "trace-sock", Kind(9).String(): "kind(9)",
		MatchNone.String(): "none", MatchL3Only.String(): "L3-Only", MatchL3L4.String(): "L3-L4",
		MatchL4Only.String(): "L4-Only", MatchAll.String(): "all", MatchL3Proto.String(): "L3-Proto",
		MatchProtoOnly.String(): "Proto-Only", MatchType(9).String(): "unknown",
		TCPFlags(0x12).String(): "SYN, ACK", TCPFlags(0xff).String(): "SYN, ACK, RST, FIN, PSH, URG, ECE, CWR",
		TCPFlags(0).String(): "",
		DropNone.String():    "none", DropPolicyDenied.String(): "policy-denied", DropInvalidPacket.String(): "invalid-packet",
		DropReason(9).String(): "reason(9)",
	} {
		if got != want {
			t.Errorf("%q, want %q", got, want)
		}
	}
	if n := (Counters{DroppedPolicy: [2]uint64{1, 2}, DroppedInvalid: [2]uint64{3, 4}}).Dropped(); n != 10 {
		t.Errorf("Dropped() = %d, want 10", n)
	}
}

// TestTCPFlags: each method reads its bit of the TCP header's byte 13.
func TestTCPFlags(t *testing.T) {
	for i, get := range []func(TCPFlags) bool{TCPFlags.FIN, TCPFlags.SYN, TCPFlags.RST, TCPFlags.PSH, TCPFlags.ACK, TCPFlags.URG, TCPFlags.ECE, TCPFlags.CWR} {
		for bit := range 8 {
			if got := get(TCPFlags(1) << bit); got != (bit == i) {
				t.Errorf("flag method %d on bit %d: %v", i, bit, got)
			}
		}
		if get(0) || !get(0xff) {
			t.Errorf("flag method %d on 0 or 0xff", i)
		}
	}
}

// testEvent is an event with the fields every kind has.
func testEvent(size int, family uint8, kind Kind) []byte {
	b := make([]byte, size)
	ne := binary.NativeEndian
	ne.PutUint64(b[0:], 99)
	b[68], b[69], b[72], b[74] = family, uint8(datapath.TCP), uint8(datapath.Egress), uint8(kind)
	return b
}

// TestDecodePolicyVerdict: kind, TCP flags and match type at 74-76.
func TestDecodePolicyVerdict(t *testing.T) {
	b := testEvent(eventSize, 4, KindPolicyVerdict)
	b[70], b[73], b[75], b[76] = uint8(VerdictAudit), flowNew, uint8(TCPFlagSYN|TCPFlagECE), uint8(MatchL4Only)
	f, ok := decode(b, func(uint64) time.Time { return time.Time{} })
	if !ok || f.Kind != KindPolicyVerdict || f.Verdict != VerdictAudit || !f.New || f.MatchType != MatchL4Only ||
		!f.TCPFlags.SYN() || !f.TCPFlags.ECE() || f.TCPFlags.ACK() || f.Service.IsValid() {
		t.Fatalf("decoded %+v, %v", f, ok)
	}
}

// TestDecodeSock: a socket translation of an IPv6 socket to an IPv4
// service (v4-mapped addresses reported as IPv4), bound and unbound.
func TestDecodeSock(t *testing.T) {
	b := testEvent(sockEventSize, 6, KindSockTranslate)
	ne := binary.NativeEndian
	src, dst, svc := netip.MustParseAddr("::ffff:10.0.0.7").As16(), netip.MustParseAddr("::ffff:10.2.0.5").As16(), netip.MustParseAddr("::ffff:10.96.0.10").As16()
	copy(b[8:], src[:])
	copy(b[24:], dst[:])
	binary.BigEndian.PutUint16(b[60:], 5000)
	binary.BigEndian.PutUint16(b[62:], 8080)
	ne.PutUint16(b[66:], 2)
	b[70], b[77] = uint8(VerdictTranslated), uint8(XlatePostForward)
	ne.PutUint64(b[80:], 0x1111)
	ne.PutUint64(b[88:], 0x2222)
	ne.PutUint64(b[96:], 0x3333)
	copy(b[104:], svc[:])
	binary.BigEndian.PutUint16(b[120:], 80)
	at := time.Unix(5, 0)
	f, ok := decode(b, func(uint64) time.Time { return at })
	want := Flow{
		Time: at, Kind: KindSockTranslate, Verdict: VerdictTranslated, Direction: datapath.Egress, Protocol: datapath.TCP,
		Src: netip.MustParseAddrPort("10.0.0.7:5000"), Dst: netip.MustParseAddrPort("10.2.0.5:8080"), DstCluster: 2,
		Service: netip.MustParseAddrPort("10.96.0.10:80"), XlatePoint: XlatePostForward,
		SocketCookie: 0x1111, NetnsCookie: 0x2222, CgroupID: 0x3333,
	}
	if !ok || f != want {
		t.Fatalf("decoded %+v, %v\nwant %+v", f, ok, want)
	}
	clear(b[8:24])
	if f, _ := decode(b, func(uint64) time.Time { return at }); f.Src.IsValid() {
		t.Fatalf("unbound socket: source %v, want none", f.Src)
	}
	if _, ok := decode(b[:sockEventSize-1], func(uint64) time.Time { return at }); ok {
		t.Fatal("decoded a short socket event")
	}
}

// FuzzDecode: any bytes decode or are refused, never panic; what decodes
// is consistent with its kind.
func FuzzDecode(f *testing.F) {
	f.Add(testEvent(eventSize, 4, KindDrop))
	f.Add(testEvent(eventSize, 6, KindPolicyVerdict))
	f.Add(testEvent(sockEventSize, 6, KindSockTranslate))
	f.Add(testEvent(sockEventSize-1, 4, KindSockTranslate))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		fl, ok := decode(b, func(m uint64) time.Time { return time.Unix(0, int64(m)) })
		if !ok {
			if len(b) >= sockEventSize {
				t.Fatalf("refused an event of %d bytes", len(b))
			}
			return
		}
		if fl.Kind == 0 {
			t.Fatal("decoded an event without a kind")
		}
		if fl.Kind != KindSockTranslate && (fl.Service.IsValid() || fl.SocketCookie != 0) {
			t.Fatalf("socket fields in a %s event", fl.Kind)
		}
		if fl.Kind == KindSockTranslate && (fl.Dst.Addr().Is4In6() || fl.Service.Addr().Is4In6()) {
			t.Fatalf("v4-mapped address left in %+v", fl)
		}
	})
}
