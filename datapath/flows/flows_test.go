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
// says (the programs' tests compare whole events read from the kernel).
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
		Time: at.Add(1234), Verdict: VerdictDropped, DropReason: DropPolicyDenied, Direction: datapath.Ingress, Ifindex: 7,
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
		DropNone.String(): "none", DropPolicyDenied.String(): "policy-denied", DropInvalidPacket.String(): "invalid-packet",
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
