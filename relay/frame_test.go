package relay

import (
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/clustermesh/clustermesh/relay/relaytest"
)

func marshal(t testing.TB, r *observerpb.GetFlowsResponse) []byte {
	b, err := proto.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readFrame reads what proto.Unmarshal reads: the response's time, else
// its flow's; a node name appended is the one a decoder sees.
func TestReadFrame(t *testing.T) {
	ts := time.Date(2026, 3, 4, 5, 6, 7, 890, time.UTC)
	flow := relaytest.Flow("east/n1", ts, "shop", "a")
	for _, tc := range []struct {
		name string
		resp *observerpb.GetFlowsResponse
		want int64
		node bool
	}{
		{"time and node", &observerpb.GetFlowsResponse{NodeName: "east/n1", Time: timestamppb.New(ts.Add(time.Second)), ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: flow}}, ts.Add(time.Second).UnixNano(), true},
		{"flow time only", &observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: flow}}, ts.UnixNano(), false},
		{"node status", &observerpb.GetFlowsResponse{Time: timestamppb.New(time.Unix(-5, 7)), ResponseTypes: &observerpb.GetFlowsResponse_NodeStatus{NodeStatus: &relaypb.NodeStatusEvent{}}}, time.Unix(-5, 7).UnixNano(), false},
		{"lost events", &observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_LostEvents{LostEvents: &flowpb.LostEvent{NumEventsLost: 3}}}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := marshal(t, tc.resp)
			fi, err := readFrame(b)
			if err != nil || fi.at != tc.want || fi.hasNodeName != tc.node {
				t.Fatalf("readFrame = %+v, %v; want at %d, node name %v", fi, err, tc.want, tc.node)
			}
			var back observerpb.GetFlowsResponse
			if err := proto.Unmarshal(withNodeName(b, "west/n9"), &back); err != nil || back.NodeName != "west/n9" {
				t.Fatalf("with the node name: %v, %v", back.NodeName, err)
			}
		})
	}
	if _, err := readFrame([]byte{0x0a, 0x05, 0x01}); err == nil {
		t.Error("a truncated field was read")
	}
}

// FuzzReadFrame: no input crashes readFrame; what proto.Unmarshal accepts,
// readFrame reads with the same time.
func FuzzReadFrame(f *testing.F) {
	ts := time.Date(2026, 3, 4, 5, 6, 7, 890, time.UTC)
	for _, r := range []*observerpb.GetFlowsResponse{
		{NodeName: "east/n1", Time: timestamppb.New(ts), ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: relaytest.Flow("east/n1", ts, "shop", "a")}},
		{ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: relaytest.Flow("east/n1", ts, "shop", "a")}},
		{Time: timestamppb.New(time.Unix(1<<40, 0))},
	} {
		f.Add(marshal(f, r))
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		fi, err := readFrame(b)
		var r observerpb.GetFlowsResponse
		if proto.Unmarshal(b, &r) != nil {
			return
		}
		if err != nil {
			t.Fatalf("proto accepts %x, readFrame: %v", b, err)
		}
		want, ok := int64(0), false
		switch {
		case r.Time != nil:
			want, ok = timeNs(r.Time), true
		case r.GetFlow().GetTime() != nil:
			want, ok = timeNs(r.GetFlow().GetTime()), true
		}
		if ok != fi.hasTime || (ok && want != fi.at) {
			t.Fatalf("%x: readFrame %+v, proto time %d (%v)", b, fi, want, ok)
		}
	})
}

// timeNs is a timestamp in ns, saturated as readTimestamp does.
func timeNs(ts *timestamppb.Timestamp) int64 {
	const maxSec = int64(1<<63-1) / 1_000_000_000
	switch {
	case ts.Seconds > maxSec:
		return 1<<63 - 1
	case ts.Seconds < -maxSec:
		return -1 << 63
	}
	return ts.Seconds*1e9 + int64(ts.Nanos)
}
